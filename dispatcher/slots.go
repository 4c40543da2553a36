package dispatcher

import (
	"maps"
	"slices"

	"github.com/weft-ci/weft/subjects"
)

// slotTable holds the WIP slot leases of one repository, indexed for
// admission: how many slots are held, which slot a run holds, the lowest
// free slots and the leases whose run was not read admitted under them
// yet, each at a cost that does not grow with the slots held (a
// repository with a WIP limit of 100,000 and 10,000 runs in flight admits
// the next run at the cost of the first).
type slotTable struct {
	byKey  map[string]string // lease key → run id
	bySlot map[int]string    // slot → run id
	byRun  map[string][]int  // run id → the slots it holds (one, but for an admission cut short)
	// low is a slot such that every slot below it is held.
	low int
	// unconfirmed holds the leases (key → run id) whose run was not read
	// admitted under them.
	unconfirmed map[string]string
}

func newSlotTable() *slotTable {
	return &slotTable{byKey: map[string]string{}, bySlot: map[int]string{}, byRun: map[string][]int{}, unconfirmed: map[string]string{}}
}

// slotTableOf indexes leases (lease key → run id); confirmed says which
// were read admitted.
func slotTableOf(leases map[string]string, confirmed func(key, id string) bool) *slotTable {
	t := newSlotTable()
	for k, id := range leases {
		t.put(k, id, confirmed(k, id))
	}
	return t
}

// put records lease key naming run id (replacing what key named).
func (t *slotTable) put(key, id string, confirmed bool) {
	slot, ok := subjects.LeaseSlot(key)
	if !ok {
		return
	}
	t.remove(key)
	t.byKey[key], t.bySlot[slot] = id, id
	t.byRun[id] = append(t.byRun[id], slot)
	if !confirmed {
		t.unconfirmed[key] = id
	}
}

// remove forgets lease key.
func (t *slotTable) remove(key string) {
	id, ok := t.byKey[key]
	if !ok {
		return
	}
	slot, _ := subjects.LeaseSlot(key)
	delete(t.byKey, key)
	delete(t.bySlot, slot)
	delete(t.unconfirmed, key)
	if slots := slices.DeleteFunc(t.byRun[id], func(s int) bool { return s == slot }); len(slots) > 0 {
		t.byRun[id] = slots
	} else {
		delete(t.byRun, id)
	}
	t.low = min(t.low, slot)
}

// confirm records that lease key's run id was read admitted under it.
func (t *slotTable) confirm(key, id string) {
	if t.unconfirmed[key] == id {
		delete(t.unconfirmed, key)
	}
}

// empty reports whether no slot is held.
func (t *slotTable) empty() bool { return len(t.byKey) == 0 }

// unconfirmedLeases returns a copy of the leases whose run was not read
// admitted under them.
func (t *slotTable) unconfirmedLeases() map[string]string { return maps.Clone(t.unconfirmed) }

// slotsFor returns what plan needs of the table for the runs waiting: the
// number of slots held, the lowest slot each waiting run holds already,
// and the lowest free slots below limit, as many as there are waiting
// runs.
func (t *slotTable) slotsFor(waiting []waiting, limit int) heldSlots {
	h := heldSlots{Held: len(t.bySlot), Holds: map[string]int{}}
	for _, w := range waiting {
		if slots := t.byRun[w.ID]; len(slots) > 0 {
			h.Holds[w.ID] = slices.Min(slots)
		}
	}
	for t.bySlot[t.low] != "" {
		t.low++
	}
	for slot := t.low; slot < limit && len(h.Free) < len(waiting); slot++ {
		if t.bySlot[slot] == "" {
			h.Free = append(h.Free, slot)
		}
	}
	return h
}

// heldSlots is what admission plans on of a repository's slots.
type heldSlots struct {
	// Held is the number of slots held.
	Held int
	// Holds maps a waiting run that holds a slot already (an admission
	// cut short) to its lowest slot.
	Holds map[string]int
	// Free are the lowest free slots, lowest first, as many as the
	// waiting runs could take.
	Free []int
}
