package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/wire"
)

// store reads and writes run documents in the runs bucket. Every write is
// a compare-and-set on the key's revision; the cache only saves a read,
// and a conflict drops the entry and reads the document again.
type store struct {
	kv  jetstream.KeyValue
	log zerolog.Logger

	mu    sync.Mutex           // guards cache
	cache map[string]cachedRun // run documents as last read or written
}

// cachedRun is a run document and its revision.
type cachedRun struct {
	run *wire.Run
	rev uint64
}

// maxCachedRuns bounds the cache; past it the cache starts over.
const maxCachedRuns = 4096

func newStore(kv jetstream.KeyValue, log zerolog.Logger) *store {
	return &store{kv: kv, log: log, cache: map[string]cachedRun{}}
}

// create stores a new run document; it returns jetstream.ErrKeyExists
// (wrapped) when the run exists.
func (s *store) create(ctx context.Context, r *wire.Run) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode run %s: %w", r.ID, err)
	}
	rev, err := s.kv.Create(ctx, r.ID, data)
	if err != nil {
		return fmt.Errorf("create run %s: %w", r.ID, err)
	}
	s.remember(clone(r), rev)
	return nil
}

// get reads a run document and its revision from the bucket. A missing
// run wraps jetstream.ErrKeyNotFound.
func (s *store) get(ctx context.Context, id string) (*wire.Run, uint64, error) {
	entry, err := s.kv.Get(ctx, id)
	if err != nil {
		return nil, 0, fmt.Errorf("get run %s: %w", id, err)
	}
	var r wire.Run
	if err := json.Unmarshal(entry.Value(), &r); err != nil {
		return nil, 0, fmt.Errorf("decode run %s: %w", id, err)
	}
	return &r, entry.Revision(), nil
}

// update applies change to the run document by compare-and-set, retrying
// on a revision conflict. It returns the document before and after, or a
// nil after when change reported no change (or the run does not exist).
// change must be a pure function of the document: it may run several
// times.
func (s *store) update(ctx context.Context, id string, change func(*wire.Run) bool) (before, after *wire.Run, err error) {
	for {
		r, rev, cached, err := s.load(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			s.log.Warn().Str("run_id", id).Msg("event for unknown run")
			return nil, nil, nil
		}
		if err != nil {
			return nil, nil, err
		}
		old := clone(r)
		if !change(r) {
			if cached {
				// Another dispatcher may have moved the run on: decide
				// "nothing to do" only on a fresh read.
				s.forget(id)
				continue
			}
			return old, nil, nil
		}
		data, err := json.Marshal(r)
		if err != nil {
			return nil, nil, fmt.Errorf("encode run %s: %w", id, err)
		}
		rev, err = s.kv.Update(ctx, id, data, rev)
		if err != nil {
			s.forget(id)
			if isCASConflict(err) {
				continue
			}
			return nil, nil, fmt.Errorf("update run %s: %w", id, err)
		}
		s.remember(r, rev)
		return old, r, nil
	}
}

// load returns a copy of the run document and its revision, from the cache
// (cached is true) or from the bucket.
func (s *store) load(ctx context.Context, id string) (r *wire.Run, rev uint64, cached bool, err error) {
	s.mu.Lock()
	c, ok := s.cache[id]
	s.mu.Unlock()
	if ok {
		return clone(c.run), c.rev, true, nil
	}
	r, rev, err = s.get(ctx, id)
	if err == nil {
		s.remember(r, rev)
		r = clone(r)
	}
	return r, rev, false, err
}

func (s *store) remember(r *wire.Run, rev uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.State.Terminal() {
		delete(s.cache, r.ID)
		return
	}
	if len(s.cache) >= maxCachedRuns {
		clear(s.cache)
	}
	s.cache[r.ID] = cachedRun{run: r, rev: rev}
}

func (s *store) forget(id string) {
	s.mu.Lock()
	delete(s.cache, id)
	s.mu.Unlock()
}

// clone copies a run document deeply enough to change it: the pipeline is
// never changed and is shared.
func clone(r *wire.Run) *wire.Run {
	c := *r
	c.Stages = slices.Clone(r.Stages)
	return &c
}

// isCASConflict reports whether a write with an expected revision lost
// to another writer (10164 is the code of replicated streams).
func isCASConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
