package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// git runs git in dir with a fixed identity and returns its trimmed
// output, failing the test when it fails.
func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := gitCmd(dir, args...).Output()
	if err != nil {
		t.Fatalf("git %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out))
}

// gitOrEmpty is git that returns "" when git fails, as weft run's lookup
// did with one git process per value.
func gitOrEmpty(dir string, args ...string) string {
	out, err := gitCmd(dir, args...).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func gitCmd(dir string, args ...string) *exec.Cmd {
	cmd := exec.Command("git", append([]string{"-C", dir}, args...)...)
	cmd.Env = append(os.Environ(),
		"GIT_AUTHOR_NAME=weft", "GIT_AUTHOR_EMAIL=weft@example.com",
		"GIT_COMMITTER_NAME=weft", "GIT_COMMITTER_EMAIL=weft@example.com",
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1")
	return cmd
}

// newRepo returns a git repository on branch feature/x with one commit
// holding file name with text.
func newRepo(t *testing.T, name, text string) string {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("git is missing; CI needs it")
		}
		t.Skip("no git")
	}
	dir := t.TempDir()
	git(t, dir, "init", "-q", "-b", "feature/x")
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	git(t, dir, "add", name)
	git(t, dir, "commit", "-q", "-m", "one")
	return dir
}

func TestGitRef(t *testing.T) {
	repo := newRepo(t, "f", "x")
	detached := newRepo(t, "f", "x")
	git(t, detached, "checkout", "-q", "--detach")
	unborn := t.TempDir()
	git(t, unborn, "init", "-q")
	for _, tc := range []struct {
		name string
		dir  string
	}{
		{"branch", repo},
		{"detached", detached},
		{"no commit", unborn},
		{"not a repository", t.TempDir()},
		{"missing directory", filepath.Join(t.TempDir(), "gone")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantBranch := gitOrEmpty(tc.dir, "rev-parse", "--abbrev-ref", "HEAD")
			wantCommit := gitOrEmpty(tc.dir, "rev-parse", "HEAD")
			for _, want := range []struct{ branch, commit bool }{{true, true}, {true, false}, {false, true}, {false, false}} {
				b, c := startGitRef(t.Context(), tc.dir, want.branch, want.commit).wait()
				wb, wc := wantBranch, wantCommit
				if !want.branch {
					wb = ""
				}
				if !want.commit {
					wc = ""
				}
				if b != wb || c != wc {
					t.Errorf("startGitRef(%s, branch %v, commit %v) = %q, %q, want %q, %q", tc.dir, want.branch, want.commit, b, c, wb, wc)
				}
			}
		})
	}
}

// TestRunGitRef runs a pipeline from a git checkout with the embedded
// stack: the checkout's branch and commit reach the stage, and a flag
// overrides what git says.
func TestRunGitRef(t *testing.T) {
	repo := newRepo(t, "p.yml", "name: t\nstages:\n  - key: s\n    commands: ['echo ref=$WEFT_BRANCH@$WEFT_COMMIT']\n")
	commit := git(t, repo, "rev-parse", "HEAD")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"from git", nil, "ref=feature/x@" + commit},
		{"branch flag", []string{"--branch", "main"}, "ref=main@" + commit},
		{"both flags", []string{"--branch", "main", "--commit", "abc123"}, "ref=main@abc123"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("TMPDIR", t.TempDir())
			var stdout, stderr bytes.Buffer
			args := append([]string{"run", "--executor", "process"}, tc.args...)
			args = append(args, filepath.Join(repo, "p.yml"))
			if code := run(t.Context(), context.Background(), args, &stdout, &stderr); code != exitOK {
				t.Fatalf("weft %s exited %d, want 0\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.want) {
				t.Errorf("weft %s printed\n%s\nwant a line with %q", strings.Join(args, " "), stdout.String(), tc.want)
			}
		})
	}
}
