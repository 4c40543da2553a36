package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/stagenet"
	"github.com/weft-ci/weft/wire"
)

// executor runs a stage's commands. The agent owns the two
// implementations: host processes here, containerd containers in
// containerd.go.
type executor interface {
	// run runs spec until it exits or ctx ends (then it stops it and
	// returns). It calls started once the stage is running and out for
	// every output line, from any goroutine, and returns only after the
	// last out call.
	run(ctx context.Context, spec execSpec, started func(time.Time), out func(stream, line string)) result
}

// execSpec is what an executor needs to run a stage.
type execSpec struct {
	// job is the stage attempt.
	job *wire.Job
	// delivery is which delivery of the job's message this is: an
	// attempt whose start was never recorded (its agent died first) is
	// run again under the same attempt number by the next delivery.
	delivery int
	// commands are the stage's commands.
	commands []string
	// env is the job's environment (KEY=VALUE), without the agent's own.
	env []string
	// dir is the run's workspace on the host.
	dir string
	// image is the stage's image; empty for a host stage.
	image string
	// net is the stage's own network; nil runs it in the agent's.
	net *stagenet.Net
}

// result is how a stage ended.
type result struct {
	exitCode int
	category wire.Category
	message  string
}

// Streams of log lines: the stage's combined stdout and stderr, and weft's
// own notes.
const (
	streamOutput = "output"
	streamSystem = "system"
)

// script joins a stage's commands into one shell script that stops at the
// first failing command.
func script(commands []string) string {
	return "set -e\n" + strings.Join(commands, "\n") + "\n"
}

// processExecutor runs a stage as `sh -c` on the host in its own process
// group, with the agent's environment overlaid with the job's.
type processExecutor struct {
	killGrace time.Duration
	baseEnv   []string
}

func (p processExecutor) run(ctx context.Context, spec execSpec, started func(time.Time), out func(stream, line string)) result {
	// Pdeathsig fires when the thread that forked the shell exits: keep
	// this goroutine on its thread until the shell is gone.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if ctx.Err() != nil {
		// Stopped before it started (a cancel, a takeover, the server
		// away): no command of it may run.
		return result{exitCode: -1, category: wire.CategoryCancelled, message: "stopped before it started"}
	}
	// One pipe for both streams keeps lines in the order they were written.
	outR, outW, err := os.Pipe()
	if err != nil {
		return result{exitCode: -1, category: wire.CategoryInfra, message: fmt.Sprintf("pipe: %v", err)}
	}
	cmd := exec.Command("/bin/sh", "-c", script(spec.commands))
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = spec.dir, overlayEnv(p.baseEnv, spec.env), outW, outW
	// Pdeathsig: the shell dies with the agent, so a killed agent does not
	// leave the stage's script running (its children may outlive it).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if spec.net != nil {
		err = spec.net.Start(cmd)
	} else {
		err = cmd.Start()
	}
	outW.Close()
	if err != nil {
		outR.Close()
		return result{exitCode: -1, category: wire.CategoryInfra, message: fmt.Sprintf("start shell: %v", err)}
	}
	started(time.Now())
	pgid := cmd.Process.Pid

	var readers sync.WaitGroup
	readers.Go(func() { readLines(outR, streamOutput, out) })

	exited := make(chan error, 1)
	var waiter sync.WaitGroup
	waiter.Go(func() { exited <- cmd.Wait() })
	var waitErr error
	select {
	case waitErr = <-exited:
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), container.ErrNoGrace) {
			// Not ours to finish any more: no grace.
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			waitErr = <-exited
			break
		}
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		grace := time.NewTimer(p.killGrace)
		select {
		case waitErr = <-exited:
		case <-grace.C:
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			waitErr = <-exited
		}
		grace.Stop()
	}
	waiter.Wait()
	// Nothing the stage started may outlive it.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	closeAfter(&readers, 2*time.Second, outR)

	code := cmd.ProcessState.ExitCode()
	switch {
	case waitErr == nil:
		return result{exitCode: 0}
	case errors.As(waitErr, new(*exec.ExitError)):
		return result{exitCode: code, category: wire.CategoryCommand, message: exitMessage(cmd.ProcessState)}
	default:
		return result{exitCode: -1, category: wire.CategoryInfra, message: fmt.Sprintf("wait: %v", waitErr)}
	}
}

func exitMessage(ps *os.ProcessState) string {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return fmt.Sprintf("killed by signal %s", ws.Signal())
	}
	return fmt.Sprintf("exit status %d", ps.ExitCode())
}

// closeAfter waits for the readers to reach EOF; if a process that escaped
// the group still holds a pipe after d, it closes the pipes to end them.
func closeAfter(readers *sync.WaitGroup, d time.Duration, files ...*os.File) {
	done := make(chan struct{})
	go func() { readers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		for _, f := range files {
			f.Close()
		}
		<-done
	}
	for _, f := range files {
		f.Close()
	}
}

// readLines calls out for each line of r, splitting lines longer than
// MaxLineBytes, until EOF or a read error. A line split into pieces ends
// with its last piece: the newline of a line of an exact multiple of
// MaxLineBytes adds no empty line.
func readLines(r io.Reader, stream string, out func(stream, line string)) {
	br := bufio.NewReaderSize(r, MaxLineBytes)
	split := false // the last piece read was a line's first part
	for {
		line, isPrefix, err := br.ReadLine()
		if len(line) > 0 || (err == nil && !isPrefix && !split) {
			out(stream, string(line))
		}
		split = isPrefix
		if err != nil {
			return
		}
	}
}

// overlayEnv returns base with the entries of over replacing those of the
// same name.
func overlayEnv(base, over []string) []string {
	names := make(map[string]bool, len(over))
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		names[k] = true
	}
	out := make([]string, 0, len(base)+len(over))
	for _, kv := range base {
		if k, _, _ := strings.Cut(kv, "="); !names[k] {
			out = append(out, kv)
		}
	}
	return append(out, over...)
}
