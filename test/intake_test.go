package test

import (
	"context"
	"encoding/json"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// The intake killswitch: triggers published while it is paused wait,
// through a dispatcher restart, and are all admitted, in the order they
// came, once it is resumed.
func TestTheIntakeKillswitchHoldsTriggersInOrder(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	d := f.dispatcher(t, "--wip", "10")
	f.agent(t, "agent-k")
	intake := func(verb string) string {
		t.Helper()
		res := RunWeft(t, weftBin, "", nil, "intake", verb, "--server", f.url)
		if res.Code != 0 {
			t.Fatalf("weft intake %s: exit %d: %s", verb, res.Code, res.Stderr)
		}
		return strings.TrimSpace(res.Stdout)
	}
	if out := intake("pause"); out != "intake paused, 0 triggers waiting" {
		t.Fatalf("weft intake pause printed %q", out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var ids []string
	for i := range 5 {
		tr := wire.Trigger{ID: ulidString(), Repo: "acme/k", File: "p.yml", Time: time.Now(),
			Pipeline: "name: k\nstages:\n  - key: s\n    commands: [echo " + string(rune('a'+i)) + "]\n"}
		data, _ := json.Marshal(tr)
		if _, err := f.s.Bus.JS.Publish(ctx, subjects.Trigger(tr.Repo), data, jetstream.WithMsgID(tr.ID)); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tr.ID)
	}
	if out := intake("status"); out != "intake paused, 5 triggers waiting" {
		t.Errorf("weft intake status printed %q", out)
	}
	// A dispatcher restarted meanwhile keeps the pause.
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d.wait(t, 30*time.Second)
	d = f.dispatcher(t, "--wip", "10")
	if out := intake("status"); out != "intake paused, 5 triggers waiting" {
		t.Errorf("after a dispatcher restart weft intake status printed %q", out)
	}
	runs, err := f.s.Bus.JS.KeyValue(ctx, subjects.RunsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if keys, _ := runs.Keys(ctx); len(keys) != 0 {
		t.Fatalf("%d runs created while the intake was paused", len(keys))
	}
	if out := intake("resume"); !strings.HasPrefix(out, "intake open") {
		t.Errorf("weft intake resume printed %q", out)
	}
	var last uint64
	for i, id := range ids {
		runID := triggerRun(t, f.s, id)
		r, err := client.Get(ctx, f.s.Bus.JS, runID)
		if err != nil {
			t.Fatal(err)
		}
		if r.Seq <= last {
			t.Errorf("trigger %d became run %s with arrival %d, not after %d: out of order", i, runID, r.Seq, last)
		}
		last = r.Seq
		if r, _ := f.s.Wait(t, runID); r.State != wire.RunSucceeded {
			t.Errorf("run %s %s", runID, r.State)
		}
	}
}
