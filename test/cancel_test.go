package test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/internal/busybox"
	"github.com/weft-ci/weft/wire"
)

// weft cancel stops a running container stage on an agent process within
// 2 s (its PID 1 ignores SIGTERM: the agent's kill grace is 500 ms), ends
// the stages after it, and records the run cancelled; an ended or unknown
// run is left alone.
func TestWeftCancelStopsARunningContainerStage(t *testing.T) {
	t.Parallel()
	Containerd(t)
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	f.agent(t, "agent-c", "--executor", "containerd", "--containerd-address", ContainerdAddress(), "--kill-grace", "500ms")
	id := f.s.Submit(t, "name: sleepy\nstages:\n  - key: sleep\n    image: "+busybox.Ref+"\n    commands: [sleep 600]\n  - key: after\n    depends_on: [sleep]\n    commands: [echo never]\n")
	waitFor(t, f.s, id, "running its container", func(r *wire.Run) bool { return r.Stage("sleep").State == wire.StageRunning })

	requested := time.Now()
	res := RunWeft(t, weftBin, t.TempDir(), nil, "cancel", "--server", f.url, id)
	if res.Code != 0 || !strings.Contains(res.Stdout, "sleep\tcancelled") {
		t.Fatalf("weft cancel exited %d: %s%s", res.Code, res.Stdout, res.Stderr)
	}
	r, err := client.Get(context.Background(), f.s.Bus.JS, id)
	if err != nil {
		t.Fatal(err)
	}
	st := r.Stage("sleep")
	if r.State != wire.RunCancelled || st.State != wire.StageCancelled || r.Stage("after").State == wire.StageSucceeded {
		t.Fatalf("run %s, sleep %s, after %s; want the run and sleep cancelled", r.State, st.State, r.Stage("after").State)
	}
	if took := st.Finished.Sub(requested); took > 2*time.Second {
		t.Errorf("the container stage stopped %s after weft cancel started, want within 2s", took)
	}

	res = RunWeft(t, weftBin, t.TempDir(), nil, "cancel", "--server", f.url, id)
	if res.Code != 0 || !strings.Contains(res.Stderr, "nothing to cancel") {
		t.Errorf("weft cancel of an ended run exited %d: %s", res.Code, res.Stderr)
	}
	res = RunWeft(t, weftBin, t.TempDir(), nil, "cancel", "--server", f.url, "01NOSUCHRUN0000000000000000")
	if res.Code != 2 || !strings.Contains(res.Stderr, "no run") {
		t.Errorf("weft cancel of no run exited %d: %s", res.Code, res.Stderr)
	}
}
