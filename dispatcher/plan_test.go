package dispatcher

import (
	"reflect"
	"testing"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// w returns a waiting run on the default queue with one root stage.
func w(id string, group ...string) waiting {
	ww := waiting{ID: id, Wait: "weft.waiting.r." + id, Roots: map[string]int{"default": 1}}
	if len(group) > 0 {
		ww.Group = group[0]
	}
	return ww
}

// outcome is an action reduced to what a table states: "admit:<slot>",
// "wait:<reason>" or "drop".
func outcomes(acts []action) map[string]string {
	out := map[string]string{}
	for _, a := range acts {
		switch a.Kind {
		case actAdmit:
			out[a.Run.ID] = "admit:" + string(rune('0'+a.Slot))
		case actWait:
			out[a.Run.ID] = "wait:" + a.Reason
		case actDrop:
			out[a.Run.ID] = "drop"
		}
	}
	return out
}

// withSlots fills in the snapshot's slots from held (slot → run id), as
// the snapshot's slot table does.
func withSlots(s snapshot, held map[int]string) snapshot {
	t := newSlotTable()
	for slot, id := range held {
		t.put(subjects.LeaseKey("acme/app", slot), id, true)
	}
	s.heldSlots = t.slotsFor(s.Waiting, s.Limit)
	return s
}

func TestPlan(t *testing.T) {
	done := w("done")
	done.Done = true
	heavy := w("heavy")
	heavy.Roots = map[string]int{"default": 3}
	tests := []struct {
		name  string
		snap  snapshot
		slots map[int]string // held: slot → run id
		want  map[string]string
	}{
		{
			name: "free slots admit in arrival order, the rest wait on wip",
			snap: snapshot{Limit: 2, Waiting: []waiting{w("a"), w("b"), w("c")}},
			want: map[string]string{"a": "admit:0", "b": "admit:1", "c": "wait:" + wire.PendingWIP},
		},
		{
			name:  "held slots are skipped and counted",
			snap:  snapshot{Limit: 3, Waiting: []waiting{w("a"), w("b")}},
			slots: map[int]string{0: "x", 2: "y"},
			want:  map[string]string{"a": "admit:1", "b": "wait:" + wire.PendingWIP},
		},
		{
			name:  "slots held beyond a lowered limit count against it",
			snap:  snapshot{Limit: 1, Waiting: []waiting{w("a")}},
			slots: map[int]string{3: "x"},
			want:  map[string]string{"a": "wait:" + wire.PendingWIP},
		},
		{
			name: "a run that ended or was admitted is dropped and takes no slot",
			snap: snapshot{Limit: 1, Waiting: []waiting{done, w("a")}},
			want: map[string]string{"done": "drop", "a": "admit:0"},
		},
		{
			name: "one run of a group at a time; a later run of another group passes",
			snap: snapshot{Limit: 5, Waiting: []waiting{w("a", "g"), w("b", "g"), w("c", "h")}},
			want: map[string]string{"a": "admit:0", "b": "wait:" + wire.PendingGroup, "c": "admit:1"},
		},
		{
			name:  "a group held by a run in flight keeps the group waiting",
			snap:  snapshot{Limit: 5, Groups: map[string]string{"g": "x"}, Waiting: []waiting{w("a", "g")}},
			slots: map[int]string{0: "x"},
			want:  map[string]string{"a": "wait:" + wire.PendingGroup},
		},
		{
			// A dispatcher stopped after taking the lock and a slot for a,
			// before admitting it: a keeps both.
			name:  "a run keeps the slot and lock of an admission cut short",
			snap:  snapshot{Limit: 2, Groups: map[string]string{"g": "a"}, Waiting: []waiting{w("a", "g"), w("b"), w("c")}},
			slots: map[int]string{1: "a"},
			want:  map[string]string{"a": "admit:1", "b": "admit:0", "c": "wait:" + wire.PendingWIP},
		},
		{
			name:  "a run that holds a slot is admitted even when the rest are full",
			snap:  snapshot{Limit: 1, Waiting: []waiting{w("a"), w("b")}},
			slots: map[int]string{0: "b"},
			want:  map[string]string{"a": "wait:" + wire.PendingWIP, "b": "admit:0"},
		},
		{
			name: "backpressure: a queue at its bound makes runs wait; admitted runs add to it",
			snap: snapshot{Limit: 5, MaxPending: 4, Depth: map[string]uint64{"default": 1}, Waiting: []waiting{heavy, w("a"), w("b")}},
			want: map[string]string{"heavy": "admit:0", "a": "wait:" + wire.PendingBackpressure, "b": "wait:" + wire.PendingBackpressure},
		},
		{
			name: "no waiting runs, no actions",
			snap: snapshot{Limit: 1},
			want: map[string]string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := outcomes(plan(withSlots(tt.snap, tt.slots))); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("plan = %v, want %v", got, tt.want)
			}
		})
	}
}

// Whatever the snapshot, a plan never puts more runs in flight than the
// limit, never two runs of one group, and never one slot twice.
func TestPlanKeepsTheLimits(t *testing.T) {
	groups := []string{"", "g", "h"}
	for limit := 1; limit <= 3; limit++ {
		for held := 0; held <= limit; held++ {
			snap := snapshot{Limit: limit, Groups: map[string]string{}}
			heldBy := map[int]string{}
			for i := range held {
				heldBy[i] = "held" + string(rune('0'+i))
			}
			if held > 0 {
				snap.Groups["g"] = "held0"
			}
			for i := range 7 {
				snap.Waiting = append(snap.Waiting, w("r"+string(rune('0'+i)), groups[i%3]))
			}
			acts := plan(withSlots(snap, heldBy))
			inFlight, slots, groupsTaken := held, map[int]bool{}, map[string]string{}
			for g, id := range snap.Groups {
				groupsTaken[g] = id
			}
			for i := range held {
				slots[i] = true
			}
			for _, a := range acts {
				if a.Kind != actAdmit {
					continue
				}
				inFlight++
				if slots[a.Slot] || a.Slot >= limit {
					t.Errorf("limit %d held %d: slot %d given twice or out of range", limit, held, a.Slot)
				}
				slots[a.Slot] = true
				if g := a.Run.Group; g != "" {
					if id, ok := groupsTaken[g]; ok {
						t.Errorf("limit %d held %d: %s admitted while %s holds group %s", limit, held, a.Run.ID, id, g)
					}
					groupsTaken[g] = a.Run.ID
				}
			}
			if inFlight > limit {
				t.Errorf("limit %d held %d: %d in flight", limit, held, inFlight)
			}
		}
	}
}
