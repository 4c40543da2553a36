package dispatcher

import (
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	"github.com/weft-ci/weft/subjects"
)

// The slot table answers as a plain scan of the held slots does, whatever
// the order of takes and releases.
func TestSlotTableAnswersAsAScanOfTheLeases(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const limit = 12
	table, held := newSlotTable(), map[int]string{}
	for step := range 2000 {
		slot := rng.IntN(limit + 3) // some beyond a lowered limit
		key := subjects.LeaseKey("acme/app", slot)
		if rng.IntN(2) == 0 {
			id := "r" + string(rune('a'+rng.IntN(8)))
			table.put(key, id, false)
			held[slot] = id
		} else {
			table.remove(key)
			delete(held, slot)
		}
		var runs []waiting
		for _, id := range []string{"ra", "rb", "rz"} {
			runs = append(runs, w(id))
		}
		got := table.slotsFor(runs, limit)
		want := heldSlots{Held: len(held), Holds: map[string]int{}}
		for s, id := range held {
			if cur, ok := want.Holds[id]; (!ok || s < cur) && slices.ContainsFunc(runs, func(r waiting) bool { return r.ID == id }) {
				want.Holds[id] = s
			}
		}
		for s := 0; s < limit && len(want.Free) < len(runs); s++ {
			if _, ok := held[s]; !ok {
				want.Free = append(want.Free, s)
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: slotsFor = %+v, want %+v (held %v)", step, got, want, held)
		}
	}
}

// A lease is unconfirmed from its put until its run is read admitted
// under it; a lease written again for another run is unconfirmed again.
func TestSlotTableTracksUnconfirmedLeases(t *testing.T) {
	table := newSlotTable()
	a, b := subjects.LeaseKey("acme/app", 0), subjects.LeaseKey("acme/app", 1)
	table.put(a, "run-a", false)
	table.put(b, "run-b", true)
	if got := table.unconfirmedLeases(); !reflect.DeepEqual(got, map[string]string{a: "run-a"}) {
		t.Fatalf("unconfirmed = %v, want only %s", got, a)
	}
	table.confirm(a, "run-x") // another run: not this lease's
	table.confirm(b, "run-b")
	if got := table.unconfirmedLeases(); len(got) != 1 {
		t.Fatalf("unconfirmed after confirming another run = %v, want %s still", got, a)
	}
	table.confirm(a, "run-a")
	if got := table.unconfirmedLeases(); len(got) != 0 {
		t.Fatalf("unconfirmed after confirming = %v, want none", got)
	}
	table.put(a, "run-c", false)
	if got := table.unconfirmedLeases(); !reflect.DeepEqual(got, map[string]string{a: "run-c"}) {
		t.Fatalf("unconfirmed after a new lease on slot 0 = %v", got)
	}
	table.remove(a)
	if got := table.unconfirmedLeases(); len(got) != 0 {
		t.Fatalf("unconfirmed after the release = %v, want none", got)
	}
}
