package test

import (
	"context"
	"os"
	"path/filepath"
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

// weft cancel RUN STAGE stops that running stage within 2 s and cancels a
// pending one at once; their dependents are skipped, the other stages
// finish, and the run ends cancelled.
func TestWeftCancelOfAStageStopsItAlone(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	f.agent(t, "agent-s", "--slots", "2", "--kill-grace", "500ms")
	gate := filepath.Join(t.TempDir(), "gate")
	id := f.s.Submit(t, "name: stages\nstages:\n"+
		"  - key: slow\n    commands: [sleep 600]\n"+
		"  - key: after-slow\n    depends_on: [slow]\n    commands: [echo never]\n"+
		"  - key: other\n    commands: [\"while [ ! -e "+gate+" ]; do sleep 0.05; done\"]\n"+
		"  - key: after-other\n    depends_on: [other]\n    commands: [echo ran]\n"+
		"  - key: later\n    depends_on: [other]\n    commands: [echo never either]\n")
	waitFor(t, f.s, id, "slow and other running", func(r *wire.Run) bool {
		return r.Stage("slow").State == wire.StageRunning && r.Stage("other").State == wire.StageRunning
	})

	// A pending stage: cancelled at once, the run goes on.
	res := RunWeft(t, weftBin, t.TempDir(), nil, "cancel", "--server", f.url, id, "later")
	if res.Code != 0 || !strings.Contains(res.Stdout, "later\tcancelled") {
		t.Fatalf("weft cancel RUN later exited %d: %s%s", res.Code, res.Stdout, res.Stderr)
	}
	// A running stage: stopped within 2 s; other runs on.
	requested := time.Now()
	res = RunWeft(t, weftBin, t.TempDir(), nil, "cancel", "--server", f.url, id, "slow")
	if res.Code != 0 || !strings.Contains(res.Stdout, "slow\tcancelled") {
		t.Fatalf("weft cancel RUN slow exited %d: %s%s", res.Code, res.Stdout, res.Stderr)
	}
	r, err := client.Get(context.Background(), f.s.Bus.JS, id)
	if err != nil {
		t.Fatal(err)
	}
	if took := r.Stage("slow").Finished.Sub(requested); took > 2*time.Second {
		t.Errorf("the stage stopped %s after weft cancel started, want within 2s", took)
	}
	if st := r.Stage("other").State; st != wire.StageRunning {
		t.Errorf("other is %s after slow's cancel, want still running", st)
	}
	if err := os.WriteFile(gate, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	r, _ = f.s.Wait(t, id)
	want := map[string]wire.StageState{"slow": wire.StageCancelled, "after-slow": wire.StageSkipped, "other": wire.StageSucceeded, "after-other": wire.StageSucceeded, "later": wire.StageCancelled}
	for k, w := range want {
		if got := r.Stage(k).State; got != w {
			t.Errorf("stage %s %s, want %s", k, got, w)
		}
	}
	if r.State != wire.RunCancelled {
		t.Errorf("run %s, want cancelled", r.State)
	}
	res = RunWeft(t, weftBin, t.TempDir(), nil, "cancel", "--server", f.url, id, "nosuch")
	if res.Code != 2 || !strings.Contains(res.Stderr, "has no stage nosuch") {
		t.Errorf("weft cancel of an unknown stage exited %d: %s", res.Code, res.Stderr)
	}
}
