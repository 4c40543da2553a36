package test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/internal/procs"
	"github.com/weft-ci/weft/wire"
)

// peakRSS returns the peak resident set size of a running process so
// far, in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	n, err := procs.Peak(pid)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// counted is how a weft command whose output was counted, not kept,
// ended.
type counted struct {
	code int
	// lines counts the lines of stdout, bad those that were not want.
	lines, bad int
	firstBad   string
	// peak is its peak resident set size, as last read (VmHWM only
	// grows) every 20ms while it ran.
	peak   int64
	stderr string
}

// runCounting runs weft with args for at most d, counting the lines of its
// stdout that are want and those that are not, without keeping them.
func runCounting(t *testing.T, d time.Duration, want string, args ...string) counted {
	t.Helper()
	cmd := exec.Command(weftBin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start weft %v: %v", args, err)
	}
	var c counted
	var reader sync.WaitGroup
	reader.Go(func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.lines++
			if sc.Text() != want {
				if c.bad == 0 {
					c.firstBad = sc.Text()
				}
				c.bad++
			}
		}
	})
	done := make(chan error, 1)
	exited := make(chan struct{})
	var waiter sync.WaitGroup
	waiter.Go(func() {
		reader.Wait()
		err := cmd.Wait()
		close(exited)
		done <- err
	})
	waiter.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if n, err := procs.Peak(cmd.Process.Pid); err == nil {
				c.peak = n
			}
			select {
			case <-exited:
				return
			case <-tick.C:
			}
		}
	})
	select {
	case err = <-done:
		waiter.Wait()
	case <-time.After(d):
		_ = cmd.Process.Kill()
		<-done
		waiter.Wait()
		t.Fatalf("weft %v did not exit within %v (%d lines so far); stderr:\n%s", args, d, c.lines, stderr.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		c.code = ee.ExitCode()
	default:
		t.Fatalf("weft %v: %v", args, err)
	}
	c.stderr = stderr.String()
	return c
}

// A stage printing 100 MB, and one printing a 1 MiB line, go through
// separate weft server, agent and logs -f processes whose memory stays
// bounded: none buffers the whole log.
func TestLogs100MBWithBoundedMemory(t *testing.T) {
	t.Parallel()
	const (
		lines    = 1_000_000
		lineSize = 100 // with its newline: 100 MB in all
		// Bounds well under what holding the log takes (its batches are
		// 170 MB of JSON, its lines as Go strings more) and well over
		// what was measured: agent 30 MiB, weft logs 35 MiB, weft logs
		// -f 52 MiB, whatever the log's size. The server caches the file store
		// blocks it wrote or read in the last 10 s (nats-server's cache
		// expiry), so it grows with the rate, not the size: 114 MiB with
		// 25 MB of output, 192 MiB with 100 MB, 210 MiB with 200 MB.
		limit       = 128 << 20
		serverLimit = 384 << 20
	)
	payload := strings.Repeat("0123456789", 10)[:lineSize-1]
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	agent := f.agent(t, "volume")
	id := f.s.Submit(t, fmt.Sprintf(`name: volume
stages:
  - key: big
    commands: ['yes %s | head -n %d']
  - key: wide
    depends_on: [big]
    commands: ['head -c 1048576 /dev/zero | tr "\0" x; echo']
`, payload, lines))

	start := time.Now()
	follow := runCounting(t, 5*time.Minute, "big | "+payload, "logs", "--server", f.url, "-f", id, "big")
	elapsed := time.Since(start)
	if follow.code != 0 || follow.lines != lines || follow.bad != 0 {
		t.Fatalf("weft logs -f RUN big = exit %d, %d lines, %d not the stage's (first %q); want 0 and %d lines\nstderr:\n%s",
			follow.code, follow.lines, follow.bad, follow.firstBad, lines, follow.stderr)
	}
	r := waitFor(t, f.s, id, "succeeded", func(r *wire.Run) bool { return r.State.Terminal() })
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s", r.State)
	}
	history := runCounting(t, 5*time.Minute, "big | "+payload, "logs", "--server", f.url, id, "big")
	if history.code != 0 || history.lines != lines || history.bad != 0 {
		t.Fatalf("weft logs RUN big = exit %d, %d lines, %d not the stage's (first %q); want 0 and %d lines", history.code, history.lines, history.bad, history.firstBad, lines)
	}

	// The 1 MiB line comes whole, as consecutive pieces.
	wide := RunWeft(t, weftBin, t.TempDir(), nil, "logs", "--server", f.url, "--json", id, "wide")
	var text strings.Builder
	pieces := 0
	for _, l := range strings.Split(strings.TrimSpace(wide.Stdout), "\n") {
		var line client.Line
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("weft logs --json line of %d bytes: %v", len(l), err)
		}
		text.WriteString(line.Text)
		pieces++
	}
	if wide.Code != 0 || text.String() != strings.Repeat("x", 1<<20) {
		t.Errorf("weft logs RUN wide = %d, %d pieces joining to %d bytes; want the 1 MiB line", wide.Code, pieces, text.Len())
	}

	server, agentRSS := peakRSS(t, f.srv.cmd.Process.Pid), peakRSS(t, agent.cmd.Process.Pid)
	t.Logf("100 MB of output (%d lines) followed in %v; peak RSS: server %d MiB, agent %d MiB, weft logs -f %d MiB, weft logs (history) %d MiB; the 1 MiB line came as %d pieces",
		lines, elapsed.Round(time.Millisecond), server>>20, agentRSS>>20, follow.peak>>20, history.peak>>20, pieces)
	if server > serverLimit {
		t.Errorf("weft server peaked at %d MiB, over %d MiB: it holds the log", server>>20, serverLimit>>20)
	}
	for name, peak := range map[string]int64{"weft agent": agentRSS, "weft logs -f": follow.peak, "weft logs": history.peak} {
		if peak > limit {
			t.Errorf("%s peaked at %d MiB, over %d MiB: it holds the log", name, peak>>20, limit>>20)
		}
	}
}
