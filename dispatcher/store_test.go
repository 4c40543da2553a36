package dispatcher

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// The CI race of fa1a88a: create cached the caller's own run, so a trigger
// worker that went on reading it (createRun: its lease, state, repository)
// raced the admission of another worker changing the cached view in place.
// A run created is the caller's alone: an update through the cache leaves
// it as it was.
func TestACreatedRunIsTheCallersAlone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := bus.Provision(ctx, b.JS, 0); err != nil {
		t.Fatal(err)
	}
	rs, err := runstore.Open(ctx, b.JS)
	if err != nil {
		t.Fatal(err)
	}
	s := newStore(rs, zerolog.Nop())
	trig := wire.Trigger{ID: "trigger-1", Repo: "weft-ci/app", File: "pipeline.yml", Pipeline: diamond}
	r := newRun(testRunID, trig, parse(t, diamond), 1, t0)
	if r.Spec, err = rs.StoreSpec(ctx, r.Pipeline); err != nil {
		t.Fatal(err)
	}
	if err := s.create(ctx, r); err != nil {
		t.Fatal(err)
	}
	lease := subjects.LeaseKey(r.Repo, 0)
	after, _, err := s.update(ctx, r.ID, nil, func(c *wire.Run) bool { return admitRun(c, lease, t0) })
	if err != nil || after == nil {
		t.Fatalf("update = %v, %v; want the run admitted", after, err)
	}
	if r.Lease != "" || r.State != wire.RunQueued || r.Pending == nil {
		t.Errorf("the caller's run changed with the cache: lease %q, state %s, pending %v", r.Lease, r.State, r.Pending)
	}
}
