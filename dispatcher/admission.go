package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Admission policies for a full WIP limit or a queue over its bound.
const (
	// PolicyQueue makes a trigger wait, in arrival order.
	PolicyQueue = "queue"
	// PolicyRefuse refuses the trigger with a retry-after.
	PolicyRefuse = "refuse"
)

// wipLimit returns the WIP limit of a repository token: the dispatcher's
// --wip-repo for it, else its settings' (weft repo --wip), else the
// default.
func (d *Dispatcher) wipLimit(token string) int {
	if n, ok := d.limits[token]; ok {
		return n
	}
	d.repoMu.Lock()
	n := d.repoWIP[token]
	d.repoMu.Unlock()
	if n > 0 {
		return n
	}
	return d.cfg.WIPLimit
}

// keys lists the keys of the WIP bucket matching filter.
func (d *Dispatcher) keys(ctx context.Context, filter string) ([]string, error) {
	return bus.Keys(ctx, d.wip, filter)
}

// entries returns the keys of the WIP bucket matching filter with their
// values, read with one watch (not a lookup per key).
func (d *Dispatcher) entries(ctx context.Context, filter string) (map[string]string, error) {
	w, err := d.wip.Watch(ctx, filter, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", filter, err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string]string{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("read %s: watch closed", filter)
			}
			if e == nil {
				return out, nil
			}
			out[e.Key()] = string(e.Value())
		}
	}
}

// refusal returns the refusal of a trigger under the refuse policies, or
// nil when the trigger may go on (or must wait, under the queue policies).
func (d *Dispatcher) refusal(ctx context.Context, t wire.Trigger, p *pipeline.Pipeline) (*wire.Outcome, error) {
	if d.cfg.WIPPolicy == PolicyRefuse {
		token := subjects.RepoToken(t.Repo)
		leases, err := d.keys(ctx, subjects.RepoLeases(token))
		if err != nil {
			return nil, err
		}
		limit := d.wipLimit(token)
		// Counting the waiting runs up to the limit is enough.
		waits := 0
		c, err := d.waits(ctx, token)
		if err != nil {
			return nil, err
		}
		for ; len(leases)+waits < limit; waits++ {
			if _, ok, err := c.next(ctx); err != nil {
				return nil, err
			} else if !ok {
				break
			}
		}
		if len(leases)+waits >= limit {
			return &wire.Outcome{
				Reason: wire.RefusedWIP, RetryAfter: d.cfg.RetryAfter,
				Error: fmt.Sprintf("wip limit: %d of %d runs of %s in flight; retry after %s", len(leases)+waits, limit, repoName(t.Repo), d.cfg.RetryAfter),
			}, nil
		}
	}
	if d.cfg.MaxPending > 0 && d.cfg.BackpressurePolicy == PolicyRefuse {
		queue, n, err := d.overloaded(ctx, rootQueues(p, t.Queue))
		if err != nil {
			return nil, err
		}
		if queue != "" {
			d.count(ctx, "backpressure_refused."+queue)
			return &wire.Outcome{
				Reason: wire.RefusedBackpressure, RetryAfter: d.cfg.RetryAfter,
				Error: fmt.Sprintf("backpressure: queue %s holds %d pending jobs (bound %d); retry after %s", queue, n, d.cfg.MaxPending, d.cfg.RetryAfter),
			}, nil
		}
	}
	return nil, nil
}

func repoName(repo string) string {
	if repo == "" {
		return "the local repository"
	}
	return repo
}

// rootQueues returns the queues of a pipeline's root stages, with the
// trigger's queue override applied.
func rootQueues(p *pipeline.Pipeline, override string) []string {
	var qs []string
	for _, st := range p.Stages {
		q := st.Queue
		if override != "" && q == p.Queue {
			q = override
		}
		q = subjects.LabelQueue(q, st.Agents)
		if len(st.DependsOn) == 0 && !slices.Contains(qs, q) {
			qs = append(qs, q)
		}
	}
	return qs
}

// overloaded returns the first of queues holding MaxPending jobs or more
// and its count, or "" when none does.
func (d *Dispatcher) overloaded(ctx context.Context, queues []string) (string, uint64, error) {
	depth, err := d.queueDepths(ctx, queues)
	if err != nil {
		return "", 0, err
	}
	for _, q := range queues {
		if depth[q] >= uint64(d.cfg.MaxPending) {
			return q, depth[q], nil
		}
	}
	return "", 0, nil
}

// queueDepths counts the jobs stored (queued or running) for each queue,
// with one stream lookup per queue; nil without a MaxPending bound.
func (d *Dispatcher) queueDepths(ctx context.Context, queues []string) (map[string]uint64, error) {
	if d.cfg.MaxPending <= 0 || len(queues) == 0 {
		return nil, nil
	}
	st, err := d.js.Stream(ctx, subjects.JobsStream)
	if err != nil {
		return nil, fmt.Errorf("jobs stream: %w", err)
	}
	depth := make(map[string]uint64, len(queues))
	for _, q := range queues {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(subjects.Job(q, "*")))
		if err != nil {
			return nil, fmt.Errorf("jobs of queue %s: %w", q, err)
		}
		for _, c := range info.State.Subjects {
			depth[q] += c
		}
	}
	return depth, nil
}

// count increments a counter in the WIP bucket (stats.<name>), best effort.
func (d *Dispatcher) count(ctx context.Context, name string) { d.add(ctx, name, 1) }

// add adds n to a counter in the WIP bucket (stats.<name>), best effort.
func (d *Dispatcher) add(ctx context.Context, name string, n uint64) {
	key := subjects.StatsKey(name)
	for range 10 {
		var cur uint64
		var rev uint64
		if e, err := d.wip.Get(ctx, key); err == nil {
			_ = json.Unmarshal(e.Value(), &cur)
			rev = e.Revision()
		}
		data, _ := json.Marshal(cur + n)
		var err error
		if rev == 0 {
			_, err = d.wip.Create(ctx, key, data)
		} else {
			_, err = d.wip.Update(ctx, key, data, rev)
		}
		if err == nil {
			return
		}
	}
}

// maxPlans bounds how often one admit call plans again after losing a
// race to another dispatcher; what is left is taken by the next event or
// recheck.
const maxPlans = 8

// admit admits the waiting runs of a repository: it reads a snapshot,
// plans on it (plan.go) and applies the steps with create-only and
// compare-and-set writes. A race lost to another dispatcher makes it plan
// again on a new snapshot; it never releases a key it did not take for a
// run that cannot use it. Safe to call any time and from any dispatcher.
//
// The snapshot holds the first waiting runs only, as many as the free
// slots could take and one more (the next to wait, whose reason is
// recorded): admitting costs the same with 10 runs waiting as with
// 10,000. When runs in it could not take a free slot (their group is
// held, their queue is over its bound), it reads twice as many and plans
// again.
func (d *Dispatcher) admit(ctx context.Context, token string) error {
	defer d.admitting.lock(token)()
	want, fresh := 0, false
	for range maxPlans {
		snap, more, err := d.snapshot(ctx, token, want, fresh)
		if err != nil || len(snap.Waiting) == 0 {
			return err
		}
		steps := plan(snap)
		again, err := d.applyPlan(ctx, token, steps)
		if err != nil {
			return err
		}
		if again {
			// The lost race may be to a lease the view has not seen yet.
			fresh = true
			continue
		}
		admitted := 0
		for _, st := range steps {
			if st.Kind == actAdmit {
				admitted++
			}
		}
		if !more || admitted >= freeSlots(snap) {
			return nil
		}
		want = 2 * len(snap.Waiting)
	}
	return nil
}

// freeSlots is how many runs a snapshot's repository may still admit.
func freeSlots(s snapshot) int {
	return max(0, s.Limit-s.Held)
}

// snapshot reads what admission decides on for one repository: its slots
// and locks, and its waiting runs in arrival order, the first ones only
// (at least want, and at least one more than the free slots; want 0 is
// that minimum) with every waiting run that holds a slot already (an
// admission cut short). more says that runs beyond them wait.
func (d *Dispatcher) snapshot(ctx context.Context, token string, want int, fresh bool) (s snapshot, more bool, err error) {
	s = snapshot{Limit: d.wipLimit(token), Groups: map[string]string{}, MaxPending: d.cfg.MaxPending}
	c, err := d.waits(ctx, token)
	if err != nil {
		return s, false, err
	}
	if _, any, err := c.peek(ctx); err != nil || !any {
		return s, false, err // nobody waits: nothing to read
	}
	slots := d.repoSlots(token, fresh)
	var unconfirmed map[string]string
	if err := slots(ctx, func(t *slotTable) {
		s.heldSlots = t.slotsFor(nil, s.Limit)
		unconfirmed = t.unconfirmedLeases()
	}); err != nil {
		return s, false, err
	}
	want = max(want, freeSlots(s)+1)
	seen := map[string]bool{}
	var queues []string
	add := func(w waiting) error {
		r, err := d.waitingRun(ctx, w.ID)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			w.Done = true
		case err != nil:
			return err
		case r.Lease != "" || r.State.Terminal():
			w.Done = true
		default:
			s.Repo = r.Repo
			w.Repo, w.Group, w.Roots = r.Repo, r.Group, rootsOf(r)
			if w.Group != "" {
				if _, ok := s.Groups[w.Group]; !ok {
					if e, err := d.wip.Get(ctx, subjects.GroupKey(r.Repo, w.Group)); err == nil {
						s.Groups[w.Group] = string(e.Value())
					}
				}
			}
			for q := range w.Roots {
				if !slices.Contains(queues, q) {
					queues = append(queues, q)
				}
			}
		}
		seen[w.ID] = true
		s.Waiting = append(s.Waiting, w)
		return nil
	}
	live := 0
	for {
		if live >= want {
			_, more, err = c.peek(ctx)
			if err != nil {
				return s, false, err
			}
			break
		}
		w, ok, err := c.next(ctx)
		if err != nil {
			return s, false, err
		}
		if !ok {
			break
		}
		if err := add(w); err != nil {
			return s, false, err
		}
		if !s.Waiting[len(s.Waiting)-1].Done {
			live++
		}
	}
	// A run that holds a slot and still waits keeps its slot, wherever it
	// is in the line. A run read admitted under its lease is not read
	// again.
	for k, id := range unconfirmed {
		if seen[id] {
			continue
		}
		r, _, err := d.runs.brief(ctx, id)
		if err == nil && r.Lease == k {
			d.leases.confirm(k, id)
		}
		if err != nil || r.Lease != "" || r.State.Terminal() {
			continue
		}
		subj := subjects.Waiting(r.Repo, r.Seq)
		m, err := c.st.GetLastMsgForSubject(ctx, subj)
		if err != nil {
			continue
		}
		if err := add(waiting{ID: id, Wait: subj, WaitSeq: m.Sequence}); err != nil {
			return s, false, err
		}
	}
	slices.SortFunc(s.Waiting, func(a, b waiting) int { return strings.Compare(a.Wait, b.Wait) })
	if err := slots(ctx, func(t *slotTable) { s.heldSlots = t.slotsFor(s.Waiting, s.Limit) }); err != nil {
		return s, false, err
	}
	s.Depth, err = d.queueDepths(ctx, queues)
	return s, more, err
}

// waitCursor reads the waiting runs of one repository in the order they
// were queued (trigger order), one stream lookup each, from WEFT_WAITING:
// a run's message is deleted once it no longer waits, so no run admitted
// before is read again.
type waitCursor struct {
	st      jetstream.Stream
	subject string
	seq     uint64   // where the next lookup starts
	ahead   *waiting // read by peek, not yet by next
}

// waits returns a cursor over the waiting runs of a repository.
func (d *Dispatcher) waits(_ context.Context, token string) (*waitCursor, error) {
	return &waitCursor{st: d.waiting, subject: subjects.RepoWaiting(token), seq: 1}, nil
}

// next returns the next waiting run, or false when there is none.
func (c *waitCursor) next(ctx context.Context) (waiting, bool, error) {
	if c.ahead != nil {
		w := *c.ahead
		c.ahead = nil
		return w, true, nil
	}
	m, err := c.st.GetMsg(ctx, c.seq, jetstream.WithGetMsgSubject(c.subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return waiting{}, false, nil
	}
	if err != nil {
		return waiting{}, false, fmt.Errorf("read waiting runs: %w", err)
	}
	c.seq = m.Sequence + 1
	return waiting{ID: string(m.Data), Wait: m.Subject, WaitSeq: m.Sequence}, true, nil
}

// peek reports whether a waiting run follows, without consuming it.
func (c *waitCursor) peek(ctx context.Context) (waiting, bool, error) {
	w, ok, err := c.next(ctx)
	if ok {
		c.ahead = &w
	}
	return w, ok, err
}

// waitingRun reads the document of a waiting run. A cached document is
// enough to decide the run still waits; that it does not (admitted or
// ended) is decided on a fresh read, since a replayed run waits again.
func (d *Dispatcher) waitingRun(ctx context.Context, id string) (*wire.Run, error) {
	r, cached, err := d.runs.brief(ctx, id)
	if err == nil && cached && (r.Lease != "" || r.State.Terminal()) {
		d.runs.forget(id)
		r, _, err = d.runs.brief(ctx, id)
	}
	return r, err
}

// applyPlan applies the steps of a plan in order. It reports again when a
// step lost a race (a slot or lock taken in between by another run): the
// rest of the plan is stale, and admit plans again.
func (d *Dispatcher) applyPlan(ctx context.Context, token string, steps []action) (again bool, err error) {
	for _, st := range steps {
		switch st.Kind {
		case actDrop:
			d.drop(ctx, st.Run)
		case actWait:
			d.pend(ctx, st.Run.ID, st.Reason, st.Detail)
			if st.Reason == wire.PendingBackpressure {
				d.count(ctx, "backpressure_waited."+st.Queue)
			}
		case actAdmit:
			lost, err := d.admitOne(ctx, st)
			if err != nil || lost {
				return lost, err
			}
		}
	}
	return false, nil
}

// drop removes the waiting message of a run that no longer waits and, when the
// run ended, frees what it may hold from an admission cut short.
func (d *Dispatcher) drop(ctx context.Context, w waiting) {
	if r, err := d.runs.header(ctx, w.ID); err == nil && r.State.Terminal() {
		d.releaseAll(ctx, r)
	}
	d.unwait(ctx, w)
}

// unwait deletes the waiting message of a run that no longer waits.
func (d *Dispatcher) unwait(ctx context.Context, w waiting) {
	if err := d.waiting.DeleteMsg(ctx, w.WaitSeq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		d.log.Warn().Err(err).Str("subject", w.Wait).Msg("remove waiting run")
	}
}

// queueForAdmission records run r as waiting for admission, in its
// arrival order (its trigger's sequence); a run recorded already stays
// as it is.
func (d *Dispatcher) queueForAdmission(ctx context.Context, r *wire.Run) error {
	_, err := d.js.Publish(ctx, subjects.Waiting(r.Repo, r.Seq), []byte(r.ID), jetstream.WithExpectLastSequencePerSubject(0))
	if err != nil && !runstore.IsConflict(err) {
		return fmt.Errorf("queue run %s for admission: %w", r.ID, err)
	}
	return nil
}

// admitOne takes the group lock and the slot of an admit step, both
// create-only (a key that already names this run is its own, from an
// admission cut short), then admits the run by compare-and-set and queues
// its root stages. It reports lost when another run holds the lock or
// the slot.
func (d *Dispatcher) admitOne(ctx context.Context, st action) (lost bool, err error) {
	id, repo, group := st.Run.ID, st.Run.Repo, st.Run.Group
	if group != "" {
		if mine, err := d.take(ctx, subjects.GroupKey(repo, group), id); err != nil || !mine {
			return !mine, err
		}
	}
	lease := subjects.LeaseKey(repo, st.Slot)
	if mine, err := d.take(ctx, lease, id); err != nil || !mine {
		return !mine, err
	}
	var admitted bool
	after, w, err := d.runs.update(ctx, id, nil, func(r *wire.Run) bool {
		if admitRun(r, lease, d.cfg.Now()) {
			admitted = true
		}
		// A redone change (a stage write lost a race) queues what the
		// admission calls for on the documents as they are now.
		if r.Lease == lease {
			advance(r, d.cfg.Now())
		}
		return admitted
	})
	if err != nil {
		return false, err
	}
	if after == nil || after.Lease != lease {
		// Admitted by another dispatcher, or ended while it waited. The
		// group lock is the run's either way; the slot is freed only when
		// the run does not name it.
		cur, err := d.runs.header(ctx, id)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			d.releaseKey(ctx, lease, id)
			if group != "" {
				d.releaseKey(ctx, subjects.GroupKey(repo, group), id)
			}
		case err != nil:
			return false, err
		case cur.State.Terminal():
			d.releaseAll(ctx, cur)
			d.releaseKey(ctx, lease, id)
		case cur.Lease != lease:
			d.releaseKey(ctx, lease, id)
		}
		return true, nil
	}
	d.leases.confirm(lease, id)
	d.unwait(ctx, st.Run)
	d.log.Info().Str("run_id", id).Str("lease", lease).Dur("waited", d.cfg.Now().Sub(after.Created)).Msg("run admitted")
	return false, d.afterUpdate(ctx, after, w)
}

// take creates key naming runID, create-only. It reports whether the key
// is runID's: created now, or already naming it.
func (d *Dispatcher) take(ctx context.Context, key, runID string) (bool, error) {
	rev, err := d.wip.Create(ctx, key, []byte(runID))
	if err == nil {
		d.leases.took(rev)
		return true, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return false, fmt.Errorf("take %s: %w", key, err)
	}
	e, err := d.wip.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil // released in between: plan again
	}
	if err != nil {
		return false, fmt.Errorf("take %s: %w", key, err)
	}
	return string(e.Value()) == runID, nil
}

// pend records why a run waits, when that changed.
func (d *Dispatcher) pend(ctx context.Context, runID, reason, detail string) {
	if _, _, err := d.runs.update(ctx, runID, []string{}, func(r *wire.Run) bool { return setPending(r, reason, detail, d.cfg.Now()) }); err != nil {
		d.log.Warn().Err(err).Str("run_id", runID).Msg("record pending reason")
	}
}

// release frees the WIP slot and concurrency lock of an ended run and
// admits the next waiting runs of its repository.
func (d *Dispatcher) release(ctx context.Context, r *wire.Run) error {
	// A dispatcher that is stopping still frees what the run held.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	d.releaseAll(rctx, r)
	if ctx.Err() != nil {
		return nil
	}
	return d.admit(ctx, subjects.RepoToken(r.Repo))
}

// releaseAll deletes the lease and the group lock of r where r holds
// them. Call it only for a run that ended.
func (d *Dispatcher) releaseAll(ctx context.Context, r *wire.Run) {
	if r.Lease != "" {
		d.releaseKey(ctx, r.Lease, r.ID)
	}
	if r.Group != "" {
		d.releaseKey(ctx, subjects.GroupKey(r.Repo, r.Group), r.ID)
	}
}

// releaseKey deletes a lease or lock key if runID still holds it, on the
// revision it read, so a key taken in between by another run stays.
func (d *Dispatcher) releaseKey(ctx context.Context, key, runID string) {
	e, err := d.wip.Get(ctx, key)
	if err != nil || string(e.Value()) != runID {
		return
	}
	if err := d.wip.Delete(ctx, key, jetstream.LastRevision(e.Revision())); err != nil {
		d.log.Warn().Err(err).Str("key", key).Msg("release")
	}
}

// supersede cancels the other live runs of a new run's concurrency group
// (cancel_in_progress): the one in flight and those waiting before it.
func (d *Dispatcher) supersede(ctx context.Context, r *wire.Run) error {
	token := subjects.RepoToken(r.Repo)
	var victims []string
	if e, err := d.wip.Get(ctx, subjects.GroupKey(r.Repo, r.Group)); err == nil && string(e.Value()) != r.ID {
		victims = append(victims, string(e.Value()))
	}
	c, err := d.waits(ctx, token)
	if err != nil {
		return err
	}
	for {
		w, ok, err := c.next(ctx)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		if w.ID != r.ID {
			victims = append(victims, w.ID)
		}
	}
	for _, id := range victims {
		v, _, err := d.runs.brief(ctx, id)
		if err != nil || v.Group != r.Group || v.Seq > r.Seq || v.State.Terminal() {
			continue
		}
		if err := d.cancel(ctx, wire.Event{Type: wire.CancelRequested, RunID: id, Message: "superseded by run " + r.ID}); err != nil {
			return err
		}
	}
	return nil
}

// maintain sweeps the leases and locks of ended runs every SweepInterval,
// retries admission every RecheckInterval (backpressure waits, missed
// watch events) and reconciles the admitted runs every ReconcileInterval.
// It returns when ctx ends.
func (d *Dispatcher) maintain(ctx context.Context) error {
	sweep := time.NewTicker(d.cfg.SweepInterval)
	defer sweep.Stop()
	recheck := time.NewTicker(d.cfg.RecheckInterval)
	defer recheck.Stop()
	reconcile := time.NewTicker(d.cfg.ReconcileInterval)
	defer reconcile.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sweep.C:
			d.sweep(ctx)
		case <-reconcile.C:
			if err := d.reconcile(ctx); err != nil && ctx.Err() == nil {
				d.log.Warn().Err(err).Msg("reconcile")
			}
		case <-recheck.C:
			tokens, err := d.waitingRepos(ctx)
			if err != nil {
				d.log.Warn().Err(err).Msg("list waiting runs")
				continue
			}
			for _, token := range tokens {
				if err := d.admit(ctx, token); err != nil && ctx.Err() == nil {
					d.log.Warn().Err(err).Str("repo", token).Msg("admit")
				}
			}
		}
	}
}

// waitingRepos returns the tokens of the repositories with waiting runs,
// from the subjects WEFT_WAITING holds (one stream lookup).
func (d *Dispatcher) waitingRepos(ctx context.Context) ([]string, error) {
	info, err := d.waiting.Info(ctx, jetstream.WithSubjectFilter(subjects.AllWaiting))
	if err != nil {
		return nil, fmt.Errorf("waiting runs: %w", err)
	}
	var tokens []string
	for subj := range info.State.Subjects {
		if t := subjects.WaitingRepoToken(subj); t != "" && !slices.Contains(tokens, t) {
			tokens = append(tokens, t)
		}
	}
	slices.Sort(tokens)
	return tokens, nil
}

// sweep deletes every lease and lock whose run ended or is gone, and
// every lease of a run that was admitted under another one (an admission
// two dispatchers raced on). Leases and locks have no TTL: they belong to
// their run, not to a dispatcher, so no dispatcher being alive for a while
// never frees the slot of a live run.
func (d *Dispatcher) sweep(ctx context.Context) {
	for _, filter := range []string{subjects.AllLeases, subjects.AllGroups} {
		keys, err := d.keys(ctx, filter)
		if err != nil {
			d.log.Warn().Err(err).Msg("list leases")
			continue
		}
		for _, k := range keys {
			e, err := d.wip.Get(ctx, k)
			if err != nil {
				continue
			}
			runID := string(e.Value())
			r, err := d.runs.header(ctx, runID)
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
			case err != nil:
				continue
			case r.State.Terminal():
			case filter == subjects.AllLeases && r.Lease != "" && r.Lease != k:
			default:
				continue
			}
			d.releaseKey(ctx, k, runID)
		}
	}
}
