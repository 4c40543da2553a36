package dispatcher

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
)

// leaseView is the dispatcher's copy of the slot leases in weft_wip, kept
// by the watch that also admits after releases (watchReleases), so that
// admission reads a repository's held slots from memory: a trigger costs
// the same with 10 runs in flight as with 10,000.
//
// The copy may lag the bucket. It holds this dispatcher's own leases once
// taken: a snapshot waits until the watch has brought every lease this
// dispatcher wrote (read your writes). Another dispatcher's lease it has
// not seen yet makes a create-only take fail, a lost race, and admit
// plans again on leases read from the bucket. A release it has not seen
// yet admits one run fewer until the watch brings the deletion, which
// admits again.
type leaseView struct {
	mu sync.Mutex
	// ready is set once the watch delivered the bucket's leases as they
	// were when it started; until then, and after the watch ended, the
	// copy is not used.
	ready bool
	// seen is the revision of the last entry the watch delivered; wrote
	// the revision of the last lease this dispatcher took.
	seen, wrote uint64
	// changed is closed and replaced whenever seen moves.
	changed chan struct{}
	// byRepo holds the leases by repository token.
	byRepo map[string]*slotTable
	// confirmed holds the leases whose run was read admitted under them
	// (lease key → run id): admission need not read those runs again.
	confirmed map[string]string
}

func newLeaseView() *leaseView {
	return &leaseView{changed: make(chan struct{}), byRepo: map[string]*slotTable{}, confirmed: map[string]string{}}
}

// apply records an entry of the watch (nil: the initial leases are all
// delivered).
func (v *leaseView) apply(e jetstream.KeyValueEntry) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if e == nil {
		v.ready = true
	} else {
		v.seen = max(v.seen, e.Revision())
		if _, ok := subjects.LeaseSlot(e.Key()); ok {
			token := subjects.KeyRepoToken(e.Key())
			if v.confirmed[e.Key()] != string(e.Value()) {
				delete(v.confirmed, e.Key())
			}
			t := v.byRepo[token]
			if e.Operation() == jetstream.KeyValuePut {
				if t == nil {
					t = newSlotTable()
					v.byRepo[token] = t
				}
				t.put(e.Key(), string(e.Value()), v.confirmed[e.Key()] == string(e.Value()))
			} else if t != nil {
				t.remove(e.Key())
				if t.empty() {
					delete(v.byRepo, token)
				}
			}
		}
	}
	close(v.changed)
	v.changed = make(chan struct{})
}

// stop marks the copy unusable: the watch ended.
func (v *leaseView) stop() {
	v.mu.Lock()
	v.ready = false
	v.mu.Unlock()
}

// took records the revision of a lease this dispatcher wrote.
func (v *leaseView) took(rev uint64) {
	v.mu.Lock()
	v.wrote = max(v.wrote, rev)
	v.mu.Unlock()
}

// confirm records that run id was read admitted under lease key.
func (v *leaseView) confirm(key, id string) {
	v.mu.Lock()
	v.confirmed[key] = id
	if t := v.byRepo[subjects.KeyRepoToken(key)]; t != nil {
		t.confirm(key, id)
	}
	v.mu.Unlock()
}

// isConfirmed reports whether run id was read admitted under lease key
// since the lease was last written.
func (v *leaseView) isConfirmed(key, id string) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.confirmed[key] == id
}

// viewWait bounds how long a snapshot waits for the watch to bring this
// dispatcher's own leases before it reads them from the bucket.
const viewWait = time.Second

// read calls fn with the slot table of repository token, under the view's
// lock, once the view holds every lease this dispatcher took; it returns
// false, without calling fn, when the view cannot be used (not ready, or
// behind for viewWait).
func (v *leaseView) read(ctx context.Context, token string, fn func(*slotTable)) bool {
	deadline := time.NewTimer(viewWait)
	defer deadline.Stop()
	v.mu.Lock()
	for v.ready && v.seen < v.wrote {
		ch := v.changed
		v.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			return false
		case <-ctx.Done():
			return false
		}
		v.mu.Lock()
	}
	defer v.mu.Unlock()
	if !v.ready {
		return false
	}
	t := v.byRepo[token]
	if t == nil {
		t = newSlotTable()
	}
	fn(t)
	return true
}

// all returns every lease in the view (lease key → run id), and false
// when the view cannot be used. It does not wait for this dispatcher's own
// leases: the reconcile loop, its reader, takes up what it misses at its
// next pass.
func (v *leaseView) all() (map[string]string, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.ready {
		return nil, false
	}
	out := map[string]string{}
	for _, t := range v.byRepo {
		maps.Copy(out, t.byKey)
	}
	return out, true
}

// repoSlots returns a function that calls fn with the slot table of
// repository token: the view's (under its lock) unless fresh is set or the
// view cannot be used, else one read from the bucket, kept for the next
// calls.
func (d *Dispatcher) repoSlots(token string, fresh bool) func(ctx context.Context, fn func(*slotTable)) error {
	var read *slotTable
	return func(ctx context.Context, fn func(*slotTable)) error {
		if read == nil && !fresh && d.leases.read(ctx, token, fn) {
			return nil
		}
		if read == nil {
			leases, err := d.entries(ctx, subjects.RepoLeases(token))
			if err != nil {
				return err
			}
			read = slotTableOf(leases, d.leases.isConfirmed)
		}
		fn(read)
		return nil
	}
}

// watchReleases keeps the lease view and, on every deletion of a lease
// or group lock (a run ended, or the sweep freed what a dead one held),
// admits the next waiting runs of its repository. The admissions run in
// their own goroutine, so that the view goes on following the bucket
// while they wait for it.
func (d *Dispatcher) watchReleases(ctx context.Context) error {
	w, err := d.wip.WatchFiltered(ctx, []string{subjects.AllLeases, subjects.AllGroups})
	if err != nil {
		return fmt.Errorf("dispatcher: watch leases: %w", err)
	}
	defer func() { _ = w.Stop() }()
	defer d.leases.stop()

	var (
		mu      sync.Mutex
		pending = map[string]bool{} // repository tokens to admit
		wake    = make(chan struct{}, 1)
		admits  sync.WaitGroup
	)
	actx, stop := context.WithCancel(ctx)
	defer func() {
		stop()
		admits.Wait()
	}()
	admits.Go(func() {
		for {
			select {
			case <-actx.Done():
				return
			case <-wake:
			}
			mu.Lock()
			tokens := pending
			pending = map[string]bool{}
			mu.Unlock()
			for token := range tokens {
				if err := d.admit(actx, token); err != nil && actx.Err() == nil {
					d.log.Warn().Err(err).Str("repo", token).Msg("admit after release")
				}
			}
		}
	})

	initial := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			d.leases.apply(e)
			if e == nil {
				initial = false
				continue
			}
			if initial || e.Operation() == jetstream.KeyValuePut {
				continue
			}
			token := subjects.KeyRepoToken(e.Key())
			if token == "" {
				continue
			}
			mu.Lock()
			pending[token] = true
			mu.Unlock()
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}
}
