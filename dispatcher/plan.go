package dispatcher

import (
	"fmt"
	"slices"

	"github.com/weft-ci/weft/wire"
)

// snapshot is what admission decides on for one repository: its waiting
// runs in arrival order, the WIP slots and concurrency-group locks as the
// WIP bucket holds them, and the pending jobs of the queues the waiting
// runs start on. snapshot (admission.go) reads it; plan decides on it
// without any I/O.
type snapshot struct {
	// Repo names the repository in pending details.
	Repo string
	// Limit is the repository's WIP limit.
	Limit int
	// heldSlots are the repository's slots as they concern the waiting
	// runs (slotTable.slotsFor).
	heldSlots
	// Groups maps every locked concurrency group to the run holding it.
	Groups map[string]string
	// Waiting are waiting runs, in arrival order: the first ones,
	// as many as admission may need (see Dispatcher.snapshot), not every
	// one.
	Waiting []waiting
	// MaxPending bounds the pending jobs of a queue; 0 is no bound.
	MaxPending int
	// Depth is the number of pending jobs per queue (with MaxPending).
	Depth map[string]uint64
}

// waiting is one run waiting for admission.
type waiting struct {
	// ID is the run id; Wait the subject of its message in WEFT_WAITING
	// (subjects.Waiting), WaitSeq that message's sequence.
	ID, Wait string
	WaitSeq  uint64
	// Done is set when the run no longer waits: it ended, it was admitted
	// already, or its document is gone.
	Done bool
	// Repo is the run's repository; Group its concurrency group, "" for
	// none. Neither changes in a run's life.
	Repo, Group string
	// Roots counts the run's root stages per queue: the jobs its
	// admission queues.
	Roots map[string]int
}

// actionKind is what admission does with one waiting run.
type actionKind int

const (
	// actAdmit gives the run Slot (and its group's lock) and queues its
	// root stages.
	actAdmit actionKind = iota
	// actWait records why the run waits (Reason, Detail).
	actWait
	// actDrop removes the waiting message of a run that no longer waits.
	actDrop
)

// action is one decision of plan.
type action struct {
	Kind actionKind
	// Run is the waiting run the step is about.
	Run waiting
	// Slot is the WIP slot an admitted run takes.
	Slot int
	// Reason and Detail say why a run waits (wire.Pending*).
	Reason, Detail string
	// Queue is the queue over its bound, for a backpressure wait.
	Queue string
}

// plan decides, in arrival order, which waiting runs are admitted and into
// which slot, and why the others wait. A run whose concurrency group is
// held by another run waits and keeps its place; so does one whose root
// queue holds MaxPending jobs or more. A run may already hold a slot or
// its group's lock (a dispatcher stopped half-way through admitting it):
// it keeps them. Slots are numbered 0..Limit-1; slots held beyond a
// lowered limit still count against it.
func plan(s snapshot) []action {
	holder := s.Holds // run id -> the slot it holds
	free := slices.Clone(s.Free)
	inFlight := s.Held
	groups := make(map[string]string, len(s.Groups))
	for g, id := range s.Groups {
		groups[g] = id
	}
	depth := make(map[string]uint64, len(s.Depth))
	for q, n := range s.Depth {
		depth[q] = n
	}
	var steps []action
	for _, w := range s.Waiting {
		if w.Done {
			steps = append(steps, action{Kind: actDrop, Run: w})
			continue
		}
		if w.Group != "" {
			if id, ok := groups[w.Group]; ok && id != w.ID {
				steps = append(steps, action{Kind: actWait, Run: w, Reason: wire.PendingGroup,
					Detail: fmt.Sprintf("run %s of concurrency group %q is in flight", id, w.Group)})
				continue
			}
		}
		slot, holds := holder[w.ID]
		if !holds && (len(free) == 0 || inFlight >= s.Limit) {
			steps = append(steps, action{Kind: actWait, Run: w, Reason: wire.PendingWIP,
				Detail: fmt.Sprintf("%d of %d runs of %s in flight", inFlight, s.Limit, repoName(s.Repo))})
			continue
		}
		if q, n, over := overBound(w.Roots, depth, s.MaxPending); over {
			steps = append(steps, action{Kind: actWait, Run: w, Reason: wire.PendingBackpressure, Queue: q,
				Detail: fmt.Sprintf("queue %s holds %d pending jobs (bound %d)", q, n, s.MaxPending)})
			continue
		}
		if !holds {
			slot, free = free[0], free[1:]
			inFlight++
		}
		if w.Group != "" {
			groups[w.Group] = w.ID
		}
		for q, n := range w.Roots {
			depth[q] += uint64(n)
		}
		steps = append(steps, action{Kind: actAdmit, Run: w, Slot: slot})
	}
	return steps
}

// overBound returns the first queue, in name order, of roots that holds
// max pending jobs or more.
func overBound(roots map[string]int, depth map[string]uint64, max int) (string, uint64, bool) {
	if max <= 0 {
		return "", 0, false
	}
	queues := make([]string, 0, len(roots))
	for q := range roots {
		queues = append(queues, q)
	}
	slices.Sort(queues)
	for _, q := range queues {
		if depth[q] >= uint64(max) {
			return q, depth[q], true
		}
	}
	return "", 0, false
}

// rootsOf counts a run's root stages per queue.
func rootsOf(r *wire.Run) map[string]int {
	roots := map[string]int{}
	for _, st := range r.Pipeline.Stages {
		if len(st.DependsOn) == 0 {
			roots[st.JobQueue()]++
		}
	}
	return roots
}
