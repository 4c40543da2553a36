package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/pipeline"
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

// wipLimit returns the WIP limit of a repository token.
func (d *Dispatcher) wipLimit(token string) int {
	if n, ok := d.limits[token]; ok {
		return n
	}
	return d.cfg.WIPLimit
}

// keys lists the keys of the WIP bucket matching filter.
func (d *Dispatcher) keys(ctx context.Context, filter string) ([]string, error) {
	return bus.Keys(ctx, d.wip, filter)
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
		waits, err := d.keys(ctx, subjects.RepoWaits(token))
		if err != nil {
			return nil, err
		}
		if limit := d.wipLimit(token); len(leases)+len(waits) >= limit {
			return &wire.Outcome{
				Reason: wire.RefusedWIP, RetryAfter: d.cfg.RetryAfter,
				Error: fmt.Sprintf("wip limit: %d of %d runs of %s in flight; retry after %s", len(leases)+len(waits), limit, repoName(t.Repo), d.cfg.RetryAfter),
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
		if len(st.DependsOn) == 0 && !slices.Contains(qs, q) {
			qs = append(qs, q)
		}
	}
	return qs
}

// overloaded returns the first of queues holding more than MaxPending jobs
// and its count, or "" when none does.
func (d *Dispatcher) overloaded(ctx context.Context, queues []string) (string, uint64, error) {
	if d.cfg.MaxPending <= 0 {
		return "", 0, nil
	}
	st, err := d.js.Stream(ctx, subjects.JobsStream)
	if err != nil {
		return "", 0, fmt.Errorf("jobs stream: %w", err)
	}
	for _, q := range queues {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(subjects.Job(q, "*")))
		if err != nil {
			return "", 0, fmt.Errorf("jobs of queue %s: %w", q, err)
		}
		var n uint64
		for _, c := range info.State.Subjects {
			n += c
		}
		if n >= uint64(d.cfg.MaxPending) {
			return q, n, nil
		}
	}
	return "", 0, nil
}

// count increments a counter in the WIP bucket (stats.<name>), best effort.
func (d *Dispatcher) count(ctx context.Context, name string) {
	key := subjects.StatsKey(name)
	for range 10 {
		var n uint64
		var rev uint64
		if e, err := d.wip.Get(ctx, key); err == nil {
			_ = json.Unmarshal(e.Value(), &n)
			rev = e.Revision()
		}
		data, _ := json.Marshal(n + 1)
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

// admit admits the waiting runs of a repository, in arrival order, while
// WIP slots are free: a run of a concurrency group whose lock another run
// holds is passed over and keeps its place. Every run left waiting has its
// pending reason recorded. Safe to call any time and from any dispatcher:
// slots and locks are taken with create-only KV writes and a run is
// admitted by compare-and-set.
func (d *Dispatcher) admit(ctx context.Context, token string) error {
	d.admitMu.Lock()
	defer d.admitMu.Unlock()
	waits, err := d.keys(ctx, subjects.RepoWaits(token))
	if err != nil || len(waits) == 0 {
		return err
	}
	leases, err := d.keys(ctx, subjects.RepoLeases(token))
	if err != nil {
		return err
	}
	limit := d.wipLimit(token)
	held := map[string]bool{}
	for _, k := range leases {
		held[k] = true
	}
	slices.Sort(waits) // zero-padded sequences: arrival order
	now := d.cfg.Now()
	for _, wk := range waits {
		entry, err := d.wip.Get(ctx, wk)
		if err != nil {
			continue
		}
		runID := string(entry.Value())
		r, _, _, err := d.runs.load(ctx, runID)
		if err != nil || r.Lease != "" || r.State.Terminal() {
			if err == nil || errors.Is(err, jetstream.ErrKeyNotFound) {
				_ = d.wip.Delete(ctx, wk)
			}
			continue
		}
		if r.Group != "" {
			if e, err := d.wip.Get(ctx, subjects.GroupKey(r.Repo, r.Group)); err == nil && string(e.Value()) != runID {
				d.pend(ctx, runID, wire.PendingGroup, fmt.Sprintf("run %s of concurrency group %q is in flight", e.Value(), r.Group))
				continue
			}
		}
		if len(held) >= limit {
			d.pend(ctx, runID, wire.PendingWIP, fmt.Sprintf("%d of %d runs of %s in flight", len(held), limit, repoName(r.Repo)))
			continue
		}
		if q, n, err := d.overloaded(ctx, rootQueues(r.Pipeline, "")); err != nil {
			return err
		} else if q != "" {
			d.pend(ctx, runID, wire.PendingBackpressure, fmt.Sprintf("queue %s holds %d pending jobs (bound %d)", q, n, d.cfg.MaxPending))
			d.count(ctx, "backpressure_waited."+q)
			continue
		}
		if r.Group != "" {
			gk := subjects.GroupKey(r.Repo, r.Group)
			if _, err := d.wip.Create(ctx, gk, []byte(runID), jetstream.KeyTTL(d.cfg.LeaseTTL)); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
				return fmt.Errorf("lock group %s: %w", gk, err)
			} else if err != nil {
				if e, gerr := d.wip.Get(ctx, gk); gerr != nil || string(e.Value()) != runID {
					continue // taken in between
				}
			}
		}
		lease := ""
		for slot := range limit {
			k := subjects.LeaseKey(r.Repo, slot)
			if held[k] {
				continue
			}
			if _, err := d.wip.Create(ctx, k, []byte(runID), jetstream.KeyTTL(d.cfg.LeaseTTL)); err == nil {
				lease = k
				break
			} else if !errors.Is(err, jetstream.ErrKeyExists) {
				return fmt.Errorf("lease %s: %w", k, err)
			}
			held[k] = true
		}
		if lease == "" {
			d.releaseGroup(ctx, r)
			d.pend(ctx, runID, wire.PendingWIP, fmt.Sprintf("%d of %d runs of %s in flight", limit, limit, repoName(r.Repo)))
			continue
		}
		held[lease] = true
		before, after, err := d.runs.update(ctx, runID, func(r *wire.Run) bool { return admitRun(r, lease, d.cfg.Now()) })
		if err != nil || after == nil {
			d.releaseKey(ctx, lease, runID)
			d.releaseGroup(ctx, r)
			delete(held, lease)
			if err != nil {
				return err
			}
			continue
		}
		_ = d.wip.Delete(ctx, wk)
		d.log.Info().Str("run_id", runID).Str("lease", lease).Dur("waited", now.Sub(r.Created)).Msg("run admitted")
		if err := d.afterUpdate(ctx, before, after); err != nil {
			return err
		}
	}
	return nil
}

// pend records why a run waits, when that changed.
func (d *Dispatcher) pend(ctx context.Context, runID, reason, detail string) {
	if _, _, err := d.runs.update(ctx, runID, func(r *wire.Run) bool { return setPending(r, reason, detail, d.cfg.Now()) }); err != nil {
		d.log.Warn().Err(err).Str("run_id", runID).Msg("record pending reason")
	}
}

// release frees the WIP slot and concurrency lock of an ended run and
// admits the next waiting runs of its repository.
func (d *Dispatcher) release(ctx context.Context, r *wire.Run) error {
	// A dispatcher that is stopping still frees what the run held.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if r.Lease != "" {
		d.releaseKey(rctx, r.Lease, r.ID)
	}
	d.releaseGroup(rctx, r)
	if ctx.Err() != nil {
		return nil
	}
	return d.admit(ctx, subjects.RepoToken(r.Repo))
}

func (d *Dispatcher) releaseGroup(ctx context.Context, r *wire.Run) {
	if r.Group != "" {
		d.releaseKey(ctx, subjects.GroupKey(r.Repo, r.Group), r.ID)
	}
}

// releaseKey deletes a lease or lock key if runID still holds it.
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
	waits, err := d.keys(ctx, subjects.RepoWaits(token))
	if err != nil {
		return err
	}
	for _, wk := range waits {
		if e, err := d.wip.Get(ctx, wk); err == nil && string(e.Value()) != r.ID {
			victims = append(victims, string(e.Value()))
		}
	}
	for _, id := range victims {
		v, _, _, err := d.runs.load(ctx, id)
		if err != nil || v.Group != r.Group || v.Seq > r.Seq || v.State.Terminal() {
			continue
		}
		if err := d.cancel(ctx, wire.Event{Type: wire.CancelRequested, RunID: id, Message: "superseded by run " + r.ID}); err != nil {
			return err
		}
	}
	return nil
}

// maintain renews the leases and locks of live runs every LeaseTTL/3,
// releases those of ended runs, retries admission every RecheckInterval
// (backpressure waits, missed watch events) and reconciles the admitted
// runs every ReconcileInterval. It returns when ctx ends.
func (d *Dispatcher) maintain(ctx context.Context) error {
	renew := time.NewTicker(d.cfg.LeaseTTL / 3)
	defer renew.Stop()
	recheck := time.NewTicker(d.cfg.RecheckInterval)
	defer recheck.Stop()
	reconcile := time.NewTicker(d.cfg.ReconcileInterval)
	defer reconcile.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-renew.C:
			d.renew(ctx)
		case <-reconcile.C:
			if err := d.reconcile(ctx); err != nil && ctx.Err() == nil {
				d.log.Warn().Err(err).Msg("reconcile")
			}
		case <-recheck.C:
			waits, err := d.keys(ctx, subjects.AllWaits)
			if err != nil {
				d.log.Warn().Err(err).Msg("list waiting runs")
				continue
			}
			seen := map[string]bool{}
			for _, k := range waits {
				if token := subjects.KeyRepoToken(k); !seen[token] {
					seen[token] = true
					if err := d.admit(ctx, token); err != nil && ctx.Err() == nil {
						d.log.Warn().Err(err).Str("repo", token).Msg("admit")
					}
				}
			}
		}
	}
}

// renew extends the TTL of every lease and lock whose run is live, and
// deletes those whose run ended or is gone.
func (d *Dispatcher) renew(ctx context.Context) {
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
			r, _, _, err := d.runs.load(ctx, runID)
			if errors.Is(err, jetstream.ErrKeyNotFound) || (err == nil && r.State.Terminal()) {
				d.releaseKey(ctx, k, runID)
				continue
			}
			if err != nil {
				continue
			}
			// KeyValue.Update would drop the key's TTL; publish the new
			// revision with a TTL, on the expected last revision.
			if _, err := d.js.Publish(ctx, subjects.KVSubject(subjects.WIPBucket, k), e.Value(),
				jetstream.WithExpectLastSequencePerSubject(e.Revision()), jetstream.WithMsgTTL(d.cfg.LeaseTTL)); err != nil {
				d.log.Debug().Err(err).Str("key", k).Msg("renew lease")
			}
		}
	}
}

// watchReleases admits the next waiting runs of a repository whenever one
// of its leases or locks goes away: released, or expired because no
// dispatcher renewed it.
func (d *Dispatcher) watchReleases(ctx context.Context) error {
	w, err := d.wip.WatchFiltered(ctx, []string{subjects.AllLeases, subjects.AllGroups}, jetstream.UpdatesOnly())
	if err != nil {
		return fmt.Errorf("dispatcher: watch leases: %w", err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil || e.Operation() == jetstream.KeyValuePut {
				continue
			}
			token := subjects.KeyRepoToken(e.Key())
			if token == "" {
				continue
			}
			if err := d.admit(ctx, token); err != nil && ctx.Err() == nil {
				d.log.Warn().Err(err).Str("repo", token).Msg("admit after release")
			}
		}
	}
}
