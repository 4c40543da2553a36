package dispatcher

import (
	"context"
	"maps"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
)

// entry is a KV entry as the lease watch delivers it.
type entry struct {
	jetstream.KeyValueEntry
	key   string
	value string
	rev   uint64
	op    jetstream.KeyValueOp
}

func (e entry) Key() string                     { return e.key }
func (e entry) Value() []byte                   { return []byte(e.value) }
func (e entry) Revision() uint64                { return e.rev }
func (e entry) Operation() jetstream.KeyValueOp { return e.op }

// leasesOf returns a copy of the view's leases of repository token, as a
// snapshot reads them.
func leasesOf(ctx context.Context, v *leaseView, token string) (map[string]string, bool) {
	var out map[string]string
	ok := v.read(ctx, token, func(t *slotTable) { out = maps.Clone(t.byKey) })
	return out, ok
}

func TestLeaseViewFollowsTheBucketAndWaitsForItsOwnLeases(t *testing.T) {
	v := newLeaseView()
	ctx := context.Background()
	token := subjects.RepoToken("acme/app")
	a, b := subjects.LeaseKey("acme/app", 0), subjects.LeaseKey("acme/app", 1)
	if _, ok := leasesOf(ctx, v, token); ok {
		t.Fatal("the view answered before the watch delivered the initial leases")
	}
	v.apply(entry{key: a, value: "run-a", rev: 3, op: jetstream.KeyValuePut})
	v.apply(nil)
	if got, ok := leasesOf(ctx, v, token); !ok || len(got) != 1 || got[a] != "run-a" {
		t.Fatalf("leases = %v, %t; want {%s: run-a}", got, ok, a)
	}

	// A lease this dispatcher took is in every later snapshot: the
	// snapshot waits for the watch to bring it.
	v.took(7)
	done := make(chan map[string]string)
	go func() {
		got, _ := leasesOf(ctx, v, token)
		done <- got
	}()
	select {
	case got := <-done:
		t.Fatalf("leases returned %v before the watch brought revision 7", got)
	case <-time.After(50 * time.Millisecond):
	}
	v.apply(entry{key: b, value: "run-b", rev: 7, op: jetstream.KeyValuePut})
	if got := <-done; len(got) != 2 || got[b] != "run-b" {
		t.Fatalf("leases after revision 7 = %v, want both", got)
	}

	v.apply(entry{key: a, rev: 9, op: jetstream.KeyValueDelete})
	if got, _ := leasesOf(ctx, v, token); len(got) != 1 || got[b] != "run-b" {
		t.Fatalf("leases after a release = %v, want only %s", got, b)
	}
	if got, ok := leasesOf(ctx, v, subjects.RepoToken("other/repo")); !ok || len(got) != 0 {
		t.Fatalf("another repository's leases = %v, %t; want none", got, ok)
	}

	v.stop()
	if _, ok := leasesOf(ctx, v, token); ok {
		t.Error("the view answered after its watch ended")
	}
}
