package main

import (
	"context"
	"os/exec"
	"strings"
)

// gitRef looks up the branch and commit of a directory's git checkout in
// the background, so that weft run starts its stack meanwhile.
type gitRef struct {
	done           chan struct{} // closed once branch and commit are set
	branch, commit string
}

// startGitRef starts looking up, in dir, the branch (when branch is true)
// and the commit (when commit is true) with one git process, which ctx
// kills. wait returns them; it must be called.
func startGitRef(ctx context.Context, dir string, branch, commit bool) *gitRef {
	r := &gitRef{done: make(chan struct{})}
	// Options of rev-parse apply to the arguments after them: the commit
	// is printed first, the abbreviated branch name second.
	args, want := []string{"-C", dir, "rev-parse"}, 0
	if commit {
		args, want = append(args, "HEAD"), want+1
	}
	if branch {
		args, want = append(args, "--abbrev-ref", "HEAD"), want+1
	}
	if want == 0 {
		close(r.done)
		return r
	}
	go func() {
		defer close(r.done)
		out, err := exec.CommandContext(ctx, "git", args...).Output()
		if err != nil {
			return // not a repository, no commit yet, no git
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != want {
			return
		}
		if commit {
			r.commit, lines = strings.TrimSpace(lines[0]), lines[1:]
		}
		if branch {
			r.branch = strings.TrimSpace(lines[0])
		}
	}()
	return r
}

// wait waits for the lookup and returns the branch and commit it found;
// "" is one it did not look up or git could not tell.
func (r *gitRef) wait() (branch, commit string) {
	<-r.done
	return r.branch, r.commit
}
