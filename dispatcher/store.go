package dispatcher

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/wire"
)

// store changes runs as runstore stores them: the run document, one
// document per stage and the pipeline spec. The dispatcher works on a run
// whole (a view: the documents assembled, with their revisions), and the
// store writes back only the documents a change touched, each by
// compare-and-set. The cache saves reads; what it holds may be stale
// (another dispatcher moved the run on), and every decision it could get
// wrong is checked against fresh reads:
//
//   - a write over a stale revision fails; the store reads the documents
//     that failed again and redoes the change on them;
//   - a change that changes nothing is decided again on fresh documents
//     (the ones the change is about, or the whole run);
//   - after a write that ends a stage, the stages its decision rests on
//     as not ended (the other dependencies of its dependents, and one
//     stage of the run not ended) are read fresh; if one ended meanwhile
//     the change is redone. Two dispatchers ending the last two stages of
//     a run each write, then read the other's: at least one sees both
//     ended, so a dependent is queued and the run is finished by one of
//     them.
//
// Changes must therefore be idempotent, and derive what follows from the
// documents (advance), not from what they just did.
type store struct {
	rs  *runstore.Store
	log zerolog.Logger

	mu     sync.Mutex
	cache  map[string]*view // views of live runs, by id
	staged int              // stages held by cache
	locks  keyLocks         // per run: an update changes the cached view in place
}

// view is a run as last read or written, with the revision of its
// document and of each stage's.
type view struct {
	run    *wire.Run
	rev    uint64
	revs   []uint64
	header []byte // the run document as encoded at rev
	// open is where settle looks for a stage not ended: the stages
	// before it were seen ended.
	open int
	// synced is when the view was last read whole or written to: a view
	// that events keep writing stays in step with the stored run, one
	// that nothing has touched for long may have fallen behind another
	// dispatcher's writes.
	synced time.Time
}

// maxCachedStages bounds the stages the cache holds; past it the cache
// starts over.
const maxCachedStages = 200_000

func newStore(rs *runstore.Store, log zerolog.Logger) *store {
	return &store{rs: rs, log: log, cache: map[string]*view{}}
}

// wrote is what one update wrote.
type wrote struct {
	// queued are the stages the update queued (as a new attempt), in file
	// order: their jobs are to be published.
	queued []string
	// ended says the update ended the run.
	ended bool
}

// create stores a new run document (its stages have none yet: they are
// pending); it wraps jetstream.ErrKeyExists when the run exists. The
// pipeline spec must be stored, under r.Spec.
func (s *store) create(ctx context.Context, r *wire.Run) error {
	rev, err := s.rs.CreateRun(ctx, r)
	if err != nil {
		return err
	}
	l := runstore.Assemble(r, r.Pipeline, func(string) (*wire.StageRun, uint64) { return nil, 0 })
	// The cache keeps a copy: updates change a cached view in place,
	// under the run's lock, and the caller goes on reading r without it.
	s.remember(&view{run: clone(l.Run), rev: rev, revs: l.Revs, header: encodeHeader(l.Run)})
	return nil
}

// header reads a run document alone, fresh. A missing run wraps
// jetstream.ErrKeyNotFound.
func (s *store) header(ctx context.Context, id string) (*wire.Run, error) {
	r, _, err := s.rs.Header(ctx, id)
	return r, err
}

// get reads a run whole, fresh. A missing run wraps
// jetstream.ErrKeyNotFound.
func (s *store) get(ctx context.Context, id string) (*wire.Run, error) {
	v, err := s.fresh(ctx, id)
	if err != nil {
		return nil, err
	}
	return v.run, nil
}

// load returns a copy of the view of a run, from the cache (cached is
// true) or read whole.
func (s *store) load(ctx context.Context, id string) (v *view, cached bool, err error) {
	unlock := s.locks.lock(id)
	defer unlock()
	v, cached, err = s.view(ctx, id)
	if err != nil {
		return nil, false, err
	}
	s.remember(v)
	return v.clone(), cached, nil
}

// fresh reads a run whole.
func (s *store) fresh(ctx context.Context, id string) (*view, error) {
	l, err := s.rs.Load(ctx, id)
	if err != nil {
		return nil, err
	}
	return &view{run: l.Run, rev: l.Rev, revs: l.Revs, header: encodeHeader(l.Run), synced: time.Now()}, nil
}

// refreshHeader reads the run document of v again.
func (s *store) refreshHeader(ctx context.Context, v *view) error {
	r, rev, err := s.rs.Header(ctx, v.run.ID)
	if err != nil {
		return err
	}
	r.Pipeline, r.Stages = v.run.Pipeline, v.run.Stages
	v.run, v.rev, v.header = r, rev, encodeHeader(r)
	return nil
}

// refreshStage reads the document of the stage at position i of v again;
// it reports whether it differed from v's.
func (s *store) refreshStage(ctx context.Context, v *view, i int) (bool, error) {
	key := v.run.Pipeline.Stages[i].Key
	st, rev, err := s.rs.Stage(ctx, v.run.ID, key)
	if err != nil {
		return false, err
	}
	if rev == v.revs[i] {
		return false, nil
	}
	if st == nil {
		p := wire.PendingStage(key, v.run.Pipeline.Stages[i].JobQueue())
		st = &p
	}
	st.Key = key
	v.run.Stages[i], v.revs[i] = *st, rev
	return true, nil
}

// maxRounds bounds the rounds of one update (a write that lost a race, a
// belief found stale); a run that keeps changing under it is left to the
// next event.
const maxRounds = 32

// update applies change to the run and writes what it changed: the
// documents of the stages it changed (by compare-and-set, all at once),
// then the run document. It returns the run as written and what the
// update wrote, or a nil run when nothing changed (or the run does not
// exist). scope names the stages change depends on, for deciding on
// fresh documents that it changes nothing; nil is the whole run.
//
// change works on the cached run in place (under the run's lock), its
// edits recorded (wire.Run.BeginEdit), so that an update costs what it
// changes, not what the run holds; it must hand out every stage it
// changes through Run.Stage or Run.Edit. It must be idempotent (see
// store): it may run several times, on documents some of its earlier
// effects were written to. The run returned is a copy of the run
// document with, as its Stages, only the stages the update queued and
// the stages they restore artifacts from.
func (s *store) update(ctx context.Context, id string, scope []string, change func(*wire.Run) bool) (*wire.Run, wrote, error) {
	var w wrote
	unlock := s.locks.lock(id)
	defer unlock()
	v, cached, err := s.view(ctx, id)
	if errors.Is(err, runstore.ErrNoRun) {
		s.log.Warn().Str("run_id", id).Msg("event for unknown run")
		return nil, w, nil
	}
	if err != nil {
		return nil, w, err
	}
	// The view is changed in place: whatever goes wrong, it leaves the
	// cache, and goes back only as written.
	s.forget(id)
	wroteAny := false
	for range maxRounds {
		saved := *v.run // the run document's fields, to undo
		v.run.BeginEdit()
		change(v.run)
		edits := v.run.EndEdit()
		var writes []runstore.StageWrite
		var at []int
		for i, old := range edits {
			if v.run.Stages[i] != old {
				writes = append(writes, runstore.StageWrite{Stage: v.run.Stages[i], Rev: v.revs[i]})
				at = append(at, i)
			}
		}
		header := encodeHeader(v.run)
		headerChanged := !bytes.Equal(header, v.header)
		undoHeader := func() {
			stages := v.run.Stages
			*v.run = saved
			v.run.Stages = stages
		}
		if len(writes) == 0 && !headerChanged {
			if cached {
				// The view may be stale: decide "nothing to do" on fresh
				// documents.
				cached = false
				if err := s.refresh(ctx, &v, scope); err != nil {
					return nil, w, err
				}
				continue
			}
			break
		}
		revs, werr := s.rs.WriteStages(ctx, id, writes)
		var ended []int
		for j, i := range at {
			if revs[j] == 0 {
				v.run.Stages[i] = edits[i] // not written: undo
				continue
			}
			old, ns := edits[i], v.run.Stages[i]
			if ns.State == wire.StageQueued && (old.State != wire.StageQueued || old.Attempt != ns.Attempt) {
				w.queued = append(w.queued, ns.Key)
			}
			if ns.State.Terminal() && !old.State.Terminal() {
				ended = append(ended, i)
			}
			v.revs[i] = revs[j]
			wroteAny = true
		}
		if werr != nil {
			undoHeader()
			if !runstore.IsConflict(werr) {
				return nil, w, werr
			}
			// Read the stages whose writes failed, and the run, again.
			for j, i := range at {
				if revs[j] == 0 {
					if _, err := s.refreshStage(ctx, v, i); err != nil {
						return nil, w, err
					}
				}
			}
			if err := s.refreshHeader(ctx, v); err != nil {
				return nil, w, err
			}
			cached = false
			continue
		}
		if headerChanged {
			rev, err := s.rs.UpdateRun(ctx, v.run, v.rev)
			if err != nil {
				undoHeader()
				if !runstore.IsConflict(err) {
					return nil, w, err
				}
				if err := s.refreshHeader(ctx, v); err != nil {
					return nil, w, err
				}
				cached = false
				continue
			}
			if v.run.State.Terminal() && !saved.State.Terminal() {
				w.ended = true
			}
			v.rev, v.header = rev, header
			wroteAny = true
		}
		stale, err := s.settle(ctx, v, ended)
		if err != nil {
			return nil, w, err
		}
		if !stale {
			break
		}
	}
	if wroteAny {
		v.synced = time.Now()
	}
	s.remember(v)
	if !wroteAny {
		return nil, w, nil
	}
	slices.SortFunc(w.queued, func(a, b string) int { return v.run.Pipeline.Index(a) - v.run.Pipeline.Index(b) })
	w.queued = slices.Compact(w.queued)
	after := *v.run
	after.Stages = make([]wire.StageRun, 0, len(w.queued))
	var holders []int // the stages the queued ones restore artifacts from
	for _, key := range w.queued {
		i := v.run.Pipeline.Index(key)
		after.Stages = append(after.Stages, v.run.Stages[i])
		for _, a := range v.run.Pipeline.Ancestors(i) {
			if v.run.Stages[a].ArtifactsSeq != 0 {
				holders = append(holders, a)
			}
		}
	}
	slices.Sort(holders)
	for _, a := range slices.Compact(holders) {
		after.Stages = append(after.Stages, v.run.Stages[a])
	}
	return &after, w, nil
}

// view returns the cached view of a run (cached is true) or reads it
// whole. Call it under the run's lock: the view is the cache's own.
func (s *store) view(ctx context.Context, id string) (v *view, cached bool, err error) {
	s.mu.Lock()
	c, ok := s.cache[id]
	s.mu.Unlock()
	if ok {
		return c, true, nil
	}
	v, err = s.fresh(ctx, id)
	return v, false, err
}

// refresh reads again what a change that changed nothing depends on: the
// run document and the stages of scope, or the whole run.
func (s *store) refresh(ctx context.Context, v **view, scope []string) error {
	if scope == nil {
		nv, err := s.fresh(ctx, (*v).run.ID)
		if err != nil {
			return err
		}
		*v = nv
		return nil
	}
	if err := s.refreshHeader(ctx, *v); err != nil {
		return err
	}
	for _, key := range scope {
		if i := (*v).run.Pipeline.Index(key); i >= 0 {
			if _, err := s.refreshStage(ctx, *v, i); err != nil {
				return err
			}
		}
	}
	return nil
}

// settle reads fresh the stages that the decisions following the end of
// the stages at ended rest on as not ended: the unfinished dependencies
// of their pending dependents, and, for the run's end, a stage of the run
// not ended, until one found not ended confirms each decision. It reports
// whether a stage had ended meanwhile (the view was stale: the change is
// to be redone).
func (s *store) settle(ctx context.Context, v *view, ended []int) (bool, error) {
	if len(ended) == 0 || v.run.State.Terminal() {
		return false, nil
	}
	p := v.run.Pipeline
	stale := false
	// confirm reads stages fresh, in order, until one is not ended.
	confirm := func(candidates func(yield func(int) bool)) error {
		for i := range candidates {
			if v.run.Stages[i].State.Terminal() {
				continue
			}
			changed, err := s.refreshStage(ctx, v, i)
			if err != nil {
				return err
			}
			if changed {
				stale = true
			}
			if !v.run.Stages[i].State.Terminal() {
				return nil
			}
		}
		return nil
	}
	for _, e := range ended {
		for _, d := range p.Dependents(e) {
			if v.run.Stages[d].State != wire.StagePending {
				continue
			}
			err := confirm(func(yield func(int) bool) {
				for _, dep := range p.Stages[d].DependsOn {
					if !yield(p.Index(dep)) {
						return
					}
				}
			})
			if err != nil {
				return false, err
			}
		}
	}
	err := confirm(func(yield func(int) bool) {
		for ; v.open < len(v.run.Stages); v.open++ {
			if !yield(v.open) {
				return
			}
		}
	})
	return stale, err
}

// encodeHeader encodes the run document alone (the pipeline and stages
// are not part of it).
func encodeHeader(r *wire.Run) []byte {
	data, err := json.Marshal(r.Document())
	if err != nil {
		panic(fmt.Sprintf("encode run %s: %v", r.ID, err)) // a run document always encodes
	}
	return data
}

func (s *store) remember(v *view) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.cache[v.run.ID]; ok {
		s.staged -= len(old.run.Stages)
		delete(s.cache, v.run.ID)
	}
	if v.run.State.Terminal() {
		return
	}
	if s.staged+len(v.run.Stages) > maxCachedStages {
		clear(s.cache)
		s.staged = 0
	}
	s.cache[v.run.ID] = v
	s.staged += len(v.run.Stages)
}

func (s *store) forget(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.cache[id]; ok {
		s.staged -= len(old.run.Stages)
		delete(s.cache, id)
	}
}

// clone copies a view deeply enough to change it: the pipeline is never
// changed and is shared.
func (v *view) clone() *view {
	return &view{run: clone(v.run), rev: v.rev, revs: slices.Clone(v.revs), header: v.header, open: v.open}
}

// clone copies a run deeply enough to change it: the pipeline is never
// changed and is shared.
func clone(r *wire.Run) *wire.Run {
	c := *r
	c.Stages = slices.Clone(r.Stages)
	if r.Pending != nil {
		p := *r.Pending
		c.Pending = &p
	}
	return &c
}

// brief returns a run document with its pipeline but not its stages (nil
// Stages), from the cache when it is there (cached is true) or read
// fresh: what admission decides on.
func (s *store) brief(ctx context.Context, id string) (r *wire.Run, cached bool, err error) {
	unlock := s.locks.lock(id)
	s.mu.Lock()
	c, ok := s.cache[id]
	s.mu.Unlock()
	if ok {
		b := *c.run
		unlock()
		b.Stages = nil
		return &b, true, nil
	}
	unlock()
	r, _, err = s.rs.Header(ctx, id)
	if err != nil {
		return nil, false, err
	}
	if r.Pipeline, err = s.rs.Spec(ctx, r.Spec); err != nil {
		return nil, false, fmt.Errorf("run %s: %w", id, err)
	}
	return r, false, nil
}
