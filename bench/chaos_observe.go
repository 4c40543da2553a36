package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/internal/busybox"
	"github.com/weft-ci/weft/internal/procs"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// readEvents reads every message of WEFT_EVENTS, up to the last one
// stored when it starts, with an ordered consumer. It returns the events,
// in stream order, and how many heartbeats were published (the
// heartbeats stream keeps only the last of each stage; its last sequence
// counts them all).
func readEvents(ctx context.Context, js jetstream.JetStream) ([]wire.Event, int, error) {
	st, err := js.Stream(ctx, subjects.EventsStream)
	if err != nil {
		return nil, 0, fmt.Errorf("chaos: events stream: %w", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("chaos: events stream: %w", err)
	}
	last := info.State.LastSeq
	c, err := js.OrderedConsumer(ctx, subjects.EventsStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, 0, fmt.Errorf("chaos: read events: %w", err)
	}
	var (
		events     []wire.Event
		heartbeats int
		seq        uint64
	)
	deadline := time.Now().Add(2 * time.Minute)
	for seq < last {
		if time.Now().After(deadline) {
			return nil, 0, fmt.Errorf("chaos: read events: at %d of %d after 2 minutes", seq, last)
		}
		batch, err := c.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return nil, 0, fmt.Errorf("chaos: read events: %w", err)
		}
		for m := range batch.Messages() {
			if meta, err := m.Metadata(); err == nil {
				seq = meta.Sequence.Stream
			}
			var ev wire.Event
			if json.Unmarshal(m.Data(), &ev) != nil {
				continue
			}
			if ev.Type == wire.Heartbeat {
				heartbeats++
				continue
			}
			events = append(events, ev)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) {
			return nil, 0, fmt.Errorf("chaos: read events: %w", err)
		}
	}
	beats, err := js.Stream(ctx, subjects.HeartbeatsStream)
	if err != nil {
		return nil, 0, fmt.Errorf("chaos: heartbeats stream: %w", err)
	}
	binfo, err := beats.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("chaos: heartbeats stream: %w", err)
	}
	return events, heartbeats + int(binfo.State.LastSeq), nil
}

// readRecords reads the host stages' records (see chaosLib), one
// execution per file, with times turned from /proc/uptime seconds into
// wall time by boot.
func readRecords(dir string, boot time.Time) ([]execution, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("chaos: records: %w", err)
	}
	var out []execution
	for _, e := range entries {
		parts := strings.Split(e.Name(), ".")
		if len(parts) != 5 {
			continue
		}
		attempt, err1 := strconv.Atoi(parts[2])
		pid, err2 := strconv.Atoi(parts[4])
		if err1 != nil || err2 != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("chaos: records: %w", err)
		}
		x := execution{Run: parts[0], Stage: parts[1], Attempt: attempt, Agent: parts[3], PID: pid}
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			kind, secs, ok := strings.Cut(sc.Text(), " ")
			if !ok {
				continue
			}
			v, err := strconv.ParseFloat(secs, 64)
			if err != nil {
				continue
			}
			at := boot.Add(time.Duration(v * float64(time.Second)))
			if x.Start.IsZero() || at.Before(x.Start) {
				x.Start = at
			}
			if at.After(x.End) {
				x.End = at
			}
			x.Ended = x.Ended || kind == "end"
		}
		if !x.Start.IsZero() {
			out = append(out, x)
		}
	}
	return out, nil
}

// containerProc is a container seen running a stage attempt: the
// attempt and the container's PID namespace, so that two copies of one
// attempt count as two.
type containerProc struct {
	attemptKey
	pidNS int
}

// containerProcesses returns the containers with a live process on the
// host whose environment has CHAOS_RECORDS=records and no CHAOS_MARK
// (the processes of containers, which get the job's environment and not
// the agent's).
func containerProcesses(records string) map[containerProc]bool {
	out := map[containerProc]bool{}
	procs.Each(func(pid int, env []string) {
		var k attemptKey
		ours, host := false, false
		for _, kv := range env {
			name, value, _ := strings.Cut(kv, "=")
			switch name {
			case "CHAOS_RECORDS":
				ours = value == records
			case "CHAOS_MARK":
				host = true
			case "WEFT_RUN_ID":
				k.run = value
			case "WEFT_STAGE":
				k.stage = value
			case "WEFT_ATTEMPT":
				k.attempt, _ = strconv.Atoi(value)
			}
		}
		if ours && !host && k.run != "" && k.stage != "" {
			// A process that exits between reading its environment and
			// its namespace is not counted: without its namespace it would
			// look like a second container of the attempt.
			if n, ok := pidNamespace(pid); ok {
				out[containerProc{k, n}] = true
			}
		}
	})
	return out
}

// pidNamespace returns the inode number of process pid's PID namespace,
// and false when it cannot be read (the process is gone).
func pidNamespace(pid int) (int, bool) {
	ns, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "ns", "pid"))
	if err != nil {
		return 0, false
	}
	inner, found := strings.CutPrefix(ns, "pid:[")
	inner, closed := strings.CutSuffix(inner, "]")
	n, err := strconv.Atoi(inner)
	if !found || !closed || err != nil || n == 0 {
		return 0, false
	}
	return n, true
}

// bootTime returns the wall time /proc/uptime counts from.
func bootTime() (time.Time, error) {
	data, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return time.Time{}, fmt.Errorf("chaos: %w", err)
	}
	now := time.Now()
	secs, _, _ := strings.Cut(string(data), " ")
	v, err := strconv.ParseFloat(secs, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("chaos: /proc/uptime: %w", err)
	}
	return now.Add(-time.Duration(v * float64(time.Second))), nil
}

// setupContainers connects to containerd and loads the busybox test image
// with `weft image import`. It returns the runtime and the image for the
// container stages, or nil and "" when stages run on the host only, and
// a note saying which and why.
func setupContainers(ctx context.Context, o ChaosOptions, dir string) (*container.Runtime, string, string) {
	if o.HostOnly {
		return nil, "", "host stages only (asked for)"
	}
	address := o.ContainerdAddress
	if address == "" {
		address = "/run/containerd/containerd.sock"
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rt, err := container.Connect(cctx, container.Config{Address: address})
	if err != nil {
		return nil, "", fmt.Sprintf("containerd is not reachable at %s: host stages only (%v)", address, err)
	}
	const bin = "/bin/busybox"
	if !busybox.Available(bin) {
		rt.Close()
		return nil, "", "no static busybox at " + bin + " to build the stage image (Debian's busybox-static): host stages only"
	}
	archive := filepath.Join(dir, "busybox.tar")
	fail := func(err error) (*container.Runtime, string, string) {
		rt.Close()
		return nil, "", fmt.Sprintf("cannot load the busybox image: host stages only (%v)", err)
	}
	f, err := os.Create(archive)
	if err != nil {
		return fail(err)
	}
	err = busybox.Write(f, bin)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fail(err)
	}
	out, err := exec.CommandContext(cctx, o.Binary, "image", "import", "--containerd-address", address, archive).CombinedOutput()
	if err != nil {
		return fail(fmt.Errorf("weft image import: %w: %s", err, bytes.TrimSpace(out)))
	}
	return rt, busybox.Ref, fmt.Sprintf("host stages and containers (%s on %s)", busybox.Ref, address)
}
