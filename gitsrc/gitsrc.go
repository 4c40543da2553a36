// Package gitsrc fetches commits of repositories with the git binary: a
// shallow fetch of exactly the commit asked for into a bare cache per
// repository, from which files are read. A token for a private repository
// reaches git through its environment (an http.extraHeader), never its
// arguments, so it shows in no process list and no log.
package gitsrc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
)

// ErrNoFile is wrapped by the error of ReadFile when the commit has no
// such file.
var ErrNoFile = errors.New("gitsrc: no such file at the commit")

// ErrBadCommit is wrapped by the errors of a commit id that is not a full
// hexadecimal object name.
var ErrBadCommit = errors.New("gitsrc: not a commit id")

var commitRE = regexp.MustCompile(`^([0-9a-f]{40}|[0-9a-f]{64})$`)

// Fetcher fetches commits into bare caches under Dir. It is safe for
// concurrent use; fetches into one cache take turns.
type Fetcher struct {
	dir string

	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

// New returns a Fetcher keeping its caches in dir.
func New(dir string) *Fetcher { return &Fetcher{dir: dir, locks: map[string]*sync.Mutex{}} }

// ReadFile returns the file at path in commit of the repository at
// cloneURL, fetching the commit first (depth 1) unless the cache has it.
func (f *Fetcher) ReadFile(ctx context.Context, cloneURL, token, commit, path string) ([]byte, error) {
	if !commitRE.MatchString(commit) {
		return nil, fmt.Errorf("%w: %q", ErrBadCommit, commit)
	}
	cache, err := f.fetch(ctx, cloneURL, token, commit)
	if err != nil {
		return nil, err
	}
	out, err := git(ctx, cache, nil, "cat-file", "blob", commit+":"+path)
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "Not a valid object name") || strings.Contains(err.Error(), "bad file") {
			return nil, fmt.Errorf("%w: %s at %s", ErrNoFile, path, commit[:12])
		}
		return nil, err
	}
	return out, nil
}

// fetch makes sure the cache of cloneURL has commit and returns it.
func (f *Fetcher) fetch(ctx context.Context, cloneURL, token, commit string) (string, error) {
	sum := sha256.Sum256([]byte(cloneURL))
	cache := filepath.Join(f.dir, hex.EncodeToString(sum[:8])+".git")
	lock := f.lock(cache)
	lock.Lock()
	defer lock.Unlock()
	if _, err := os.Stat(filepath.Join(cache, "HEAD")); err != nil {
		if err := os.MkdirAll(f.dir, 0o750); err != nil {
			return "", fmt.Errorf("gitsrc: %w", err)
		}
		if _, err := git(ctx, "", nil, "init", "--quiet", "--bare", cache); err != nil {
			return "", err
		}
	}
	if _, err := git(ctx, cache, nil, "cat-file", "-e", commit+"^{commit}"); err == nil {
		return cache, nil
	}
	if _, err := git(ctx, cache, authEnv(token), "fetch", "--quiet", "--depth", "1", "--no-tags", cloneURL, commit); err != nil {
		return "", fmt.Errorf("gitsrc: fetch %s from %s: %w", commit[:12], redact(cloneURL), err)
	}
	return cache, nil
}

func (f *Fetcher) lock(cache string) *sync.Mutex {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.locks[cache]
	if l == nil {
		l = &sync.Mutex{}
		f.locks[cache] = l
	}
	return l
}

// authEnv returns the environment that makes git send token to an https
// remote, as GitHub takes it (x-access-token basic auth).
func authEnv(token string) []string {
	if token == "" {
		return nil
	}
	basic := base64.StdEncoding.EncodeToString([]byte("x-access-token:" + token))
	return []string{"GIT_CONFIG_COUNT=1", "GIT_CONFIG_KEY_0=http.extraHeader", "GIT_CONFIG_VALUE_0=Authorization: Basic " + basic}
}

// redact drops credentials from a URL for messages.
func redact(u string) string {
	if i := strings.Index(u, "@"); i > 0 && strings.Contains(u[:i], "://") {
		return u[:strings.Index(u, "://")+3] + "***" + u[i:]
	}
	return u
}

// git runs git in dir (the repository; "" for none) with env added and
// returns its output; an error carries its stderr.
func git(ctx context.Context, dir string, env []string, args ...string) ([]byte, error) {
	what := strings.Join(args, " ")
	if dir != "" {
		args = append([]string{"-C", dir}, args...)
	}
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0", "GIT_ASKPASS=true", "LC_ALL=C")
	cmd.Env = append(cmd.Env, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git %s: %w: %s", what, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Checkout makes dir a work tree of the repository at cloneURL at exactly
// commit: fetched (depth 1) unless dir has it, HEAD detached at it, the
// tracked files as the commit has them. A work tree already at commit is
// left as it is, so the stages of a run on one agent share one checkout
// and what an earlier stage made in it.
func Checkout(ctx context.Context, cloneURL, token, commit, dir string) error {
	if !commitRE.MatchString(commit) {
		return fmt.Errorf("%w: %q", ErrBadCommit, commit)
	}
	if head, err := git(ctx, dir, nil, "rev-parse", "--verify", "--quiet", "HEAD"); err == nil && strings.TrimSpace(string(head)) == commit {
		return nil
	}
	if _, err := os.Stat(filepath.Join(dir, ".git")); err != nil {
		if _, err := git(ctx, "", nil, "init", "--quiet", dir); err != nil {
			return err
		}
	}
	if _, err := git(ctx, dir, nil, "cat-file", "-e", commit+"^{commit}"); err != nil {
		if _, err := git(ctx, dir, authEnv(token), "fetch", "--quiet", "--depth", "1", "--no-tags", cloneURL, commit); err != nil {
			return fmt.Errorf("gitsrc: fetch %s from %s: %w", commit[:12], redact(cloneURL), err)
		}
	}
	if _, err := git(ctx, dir, nil, "checkout", "--quiet", "--force", "--detach", commit); err != nil {
		return fmt.Errorf("gitsrc: check out %s: %w", commit[:12], err)
	}
	return nil
}

// ErrNoRef is wrapped by Resolve's error when the repository has no such
// branch.
var ErrNoRef = errors.New("gitsrc: no such branch")

var branchRE = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,200}$`)

// Resolve returns the commit branch names in the repository at cloneURL,
// as the remote has it now (git ls-remote).
func Resolve(ctx context.Context, cloneURL, token, branch string) (string, error) {
	if !branchRE.MatchString(branch) || strings.HasPrefix(branch, "-") || strings.Contains(branch, "..") {
		return "", fmt.Errorf("%w: %q is not a branch name", ErrNoRef, branch)
	}
	out, err := git(ctx, "", authEnv(token), "ls-remote", "--", cloneURL, "refs/heads/"+branch)
	if err != nil {
		return "", fmt.Errorf("gitsrc: resolve %s of %s: %w", branch, redact(cloneURL), err)
	}
	sha, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\t")
	if !commitRE.MatchString(sha) {
		return "", fmt.Errorf("%w: %s in %s", ErrNoRef, branch, redact(cloneURL))
	}
	return sha, nil
}
