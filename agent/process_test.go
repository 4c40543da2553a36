package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/weft-ci/weft/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// runProcess runs commands with the process executor and returns the result
// and the output lines.
func runProcess(t *testing.T, ctx context.Context, grace time.Duration, commands ...string) (result, []string) {
	t.Helper()
	var mu sync.Mutex
	var lines []string
	started := false
	res := processExecutor{killGrace: grace, baseEnv: os.Environ()}.run(ctx, execSpec{commands: commands, dir: t.TempDir()},
		func(time.Time) { started = true },
		func(_, line string) { mu.Lock(); lines = append(lines, line); mu.Unlock() })
	if !started && res.category != wire.CategoryInfra {
		t.Errorf("started was not called")
	}
	return res, lines
}

func TestProcessExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		commands []string
		code     int
		category wire.Category
		lines    []string
	}{
		{"success", []string{"echo a", "echo b"}, 0, wire.CategoryNone, []string{"a", "b"}},
		{"stops at the first failure", []string{"echo a", "exit 7", "echo never"}, 7, wire.CategoryCommand, []string{"a"}},
		{"cd carries over", []string{"mkdir -p sub && cd sub", "basename \"$PWD\""}, 0, wire.CategoryNone, []string{"sub"}},
		{"stdout and stderr keep their order", []string{"echo 1; echo 2 >&2; echo 3"}, 0, wire.CategoryNone, []string{"1", "2", "3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, lines := runProcess(t, t.Context(), time.Second, tt.commands...)
			if res.exitCode != tt.code || res.category != tt.category || !slices.Equal(lines, tt.lines) {
				t.Errorf("run(%q) = exit %d %q lines %q, want exit %d %q lines %q", tt.commands, res.exitCode, res.category, lines, tt.code, tt.category, tt.lines)
			}
		})
	}
}

func TestProcessSplitsLongLines(t *testing.T) {
	tests := []struct {
		size, pieces int
	}{
		{40000, 3},
		{2 * MaxLineBytes, 2}, // its newline adds no empty line
		{1 << 20, 64},
	}
	for _, tt := range tests {
		_, lines := runProcess(t, t.Context(), time.Second, fmt.Sprintf("head -c %d /dev/zero | tr '\\0' x; echo; echo next", tt.size))
		if len(lines) != tt.pieces+1 || lines[len(lines)-1] != "next" {
			t.Errorf("a line of %d bytes came as %d lines before %q, want %d pieces before \"next\"", tt.size, len(lines)-1, lines[len(lines)-1], tt.pieces)
			continue
		}
		if got := strings.Join(lines[:tt.pieces], ""); got != strings.Repeat("x", tt.size) {
			t.Errorf("the pieces of a line of %d bytes join to %d bytes, not the line", tt.size, len(got))
		}
		for _, l := range lines[:tt.pieces-1] {
			if len(l) != MaxLineBytes {
				t.Errorf("a piece of %d bytes before the last, want %d", len(l), MaxLineBytes)
			}
		}
	}
}

func TestProcessKillsAGroupThatIgnoresSIGTERM(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	grace := 300 * time.Millisecond
	ready := make(chan struct{})
	var once sync.Once
	done := make(chan result, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		done <- processExecutor{killGrace: grace}.run(ctx,
			execSpec{commands: []string{"trap '' TERM", "sleep 30 & echo ready; sleep 30"}, dir: t.TempDir()},
			func(time.Time) {}, func(_, line string) {
				if line == "ready" {
					once.Do(func() { close(ready) })
				}
			})
	})
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("script never printed ready")
	}
	cancelled := time.Now()
	cancel()
	select {
	case r := <-done:
		if r.exitCode != -1 || !strings.Contains(r.message, "signal killed") {
			t.Errorf("cancelled run = %+v, want killed by SIGKILL", r)
		}
		if el := time.Since(cancelled); el < grace {
			t.Errorf("returned %v after cancel, before the %v grace: SIGTERM was not ignored?", el, grace)
		}
	case <-time.After(grace + 5*time.Second):
		t.Fatal("run did not return within the grace period plus 5s")
	}
}

func TestProcessKillsWhatTheStageLeftBehind(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	res := processExecutor{killGrace: time.Second, baseEnv: os.Environ()}.run(t.Context(),
		execSpec{commands: []string{"sleep 30 &", "echo $! > " + pidFile}, dir: dir},
		func(time.Time) {}, func(string, string) {})
	if res.exitCode != 0 {
		t.Fatalf("run = %+v, want success", res)
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	// The background sleep was SIGKILLed when the script exited; once it is
	// reaped (it was reparented to init) kill(pid, 0) fails.
	deadline := time.After(5 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for syscall.Kill(pid, 0) == nil && !zombie(pid) {
		select {
		case <-deadline:
			t.Fatalf("background process %d still alive after the stage ended", pid)
		case <-tick.C:
		}
	}
}

// zombie reports whether pid has exited and waits to be reaped.
func zombie(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	return len(fields) > 0 && fields[0] == "Z"
}

func TestExecutorFor(t *testing.T) {
	host := &wire.Job{}
	image := &wire.Job{}
	image.Stage.Image = "busybox"
	tests := []struct {
		mode   string
		job    *wire.Job
		refuse string
	}{
		{ExecutorAuto, host, ""},
		{ExecutorProcess, host, ""},
		{ExecutorContainerd, host, "names no image"},
		{ExecutorProcess, image, `image "busybox"`},
		{ExecutorAuto, image, "containerd is not available"},
	}
	for _, tt := range tests {
		a := &Agent{cfg: Config{Executor: tt.mode}, process: processExecutor{}, containerdErr: errors.New("no socket")}
		ex, refusal := a.executorFor(tt.job)
		if (ex == nil) != (tt.refuse != "") || !strings.Contains(refusal, tt.refuse) {
			t.Errorf("executorFor(%s, image %q) = %v, %q; want refusal %q", tt.mode, tt.job.Stage.Image, ex, refusal, tt.refuse)
		}
	}
}

func TestOverlayEnv(t *testing.T) {
	got := overlayEnv([]string{"A=1", "B=2", "C=3"}, []string{"B=job", "D=4"})
	if want := []string{"A=1", "C=3", "B=job", "D=4"}; !slices.Equal(got, want) {
		t.Errorf("overlayEnv = %q, want %q", got, want)
	}
}
