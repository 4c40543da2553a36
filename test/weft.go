package test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/weft-ci/weft/internal/procs"
)

// Root returns the repository's root directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// BuildWeft builds the weft binary into dir and returns its path.
func BuildWeft(dir string) (string, error) {
	bin := filepath.Join(dir, "weft")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/weft")
	cmd.Dir = Root()
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", errors.New("go build ./cmd/weft: " + err.Error() + "\n" + string(out))
	}
	return bin, nil
}

// Result is how a weft command ended.
type Result struct {
	// Code is the exit code.
	Code int
	// Stdout and Stderr are what it printed.
	Stdout, Stderr string
	// Elapsed is its wall time.
	Elapsed time.Duration
}

// RunWeft runs bin with args in dir with extra environment variables, waits
// up to two minutes for it and returns how it ended.
func RunWeft(t testing.TB, bin, dir string, env []string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	res := Result{Stdout: stdout.String(), Stderr: stderr.String(), Elapsed: time.Since(start)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.Code = ee.ExitCode()
	default:
		t.Fatalf("weft %v: %v", args, err)
	}
	return res
}

// Eventually polls cond every 10ms until it returns true or d has passed,
// and reports whether it did.
func Eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ProcessesWithEnv returns the pids of processes whose environment holds
// the exact entry kv (such as WEFT_RUN_ID=...): the processes of a stage.
func ProcessesWithEnv(kv string) []int { return procs.WithEnv(kv) }
