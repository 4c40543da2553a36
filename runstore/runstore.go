// Package runstore is the storage model of runs. A run is three kinds of
// document, so that what an event writes does not grow with its pipeline:
//
//   - the run document (bucket weft_runs, key <run>): the run's own state
//     (trigger, repository, admission, cancel, times) and the content
//     hash of its pipeline, a few hundred bytes whatever the pipeline;
//   - one stage document per stage (bucket weft_stages, key
//     <run>.<stage>): the stage's state, attempt, job and agent. A stage
//     that has no document is pending: a run is created with none, and a
//     stage's document is written when it is first queued, skipped or
//     cancelled;
//   - the pipeline spec (object store weft_pipelines, name = the SHA-256
//     of its JSON form), stored once and shared by every run of the same
//     pipeline. Specs never change, so readers cache them.
//
// Every document is changed only by compare-and-set on its key's revision.
// A stage's event rewrites that stage's document (and the run document
// when the run itself changes state), so the bytes written per event are
// constant in the number of stages. The rules that keep several writers
// correct across documents are the dispatcher's (see its package doc);
// this package reads, assembles and writes.
//
// Retention is JetStream's: the buckets' TTL expires a document that long
// after its last write, and a spec is kept half as long again (see
// subjects.PipelineRetention) and stored again by a new run once older
// than subjects.SpecRefresh.
package runstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// ErrNoRun is matched by the errors of reads of a run that does not exist.
var ErrNoRun = errors.New("runstore: no such run")

// maxSpecs bounds the specs a Store caches; past it the cache starts over.
const maxSpecs = 1024

// Store reads and writes runs. It is safe for concurrent use.
type Store struct {
	js     jetstream.JetStream
	runs   jetstream.KeyValue
	stages jetstream.KeyValue
	specs  jetstream.ObjectStore
	// refresh is the age past which StoreSpec stores a spec again.
	refresh time.Duration

	mu     sync.Mutex
	cache  map[string]*pipeline.Pipeline // specs by hash, as decoded
	stored map[string]time.Time          // hashes known stored, by modification time
}

// Open returns a Store on the provisioned buckets.
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	runs, err := bus.KeyValue(ctx, js, subjects.RunsBucket)
	if err != nil {
		return nil, fmt.Errorf("runstore: %w", err)
	}
	stages, err := bus.KeyValue(ctx, js, subjects.StagesBucket)
	if err != nil {
		return nil, fmt.Errorf("runstore: %w", err)
	}
	specs, err := bus.ObjectStore(ctx, js, subjects.PipelinesBucket)
	if err != nil {
		return nil, fmt.Errorf("runstore: %w", err)
	}
	keep := subjects.DefaultRetention
	if st, err := runs.Status(ctx); err == nil && st.TTL() > 0 {
		keep = st.TTL()
	}
	return &Store{
		js: js, runs: runs, stages: stages, specs: specs, refresh: subjects.SpecRefresh(keep),
		cache: map[string]*pipeline.Pipeline{}, stored: map[string]time.Time{},
	}, nil
}

// Runs returns the runs bucket, for watching run documents.
func (s *Store) Runs() jetstream.KeyValue { return s.runs }

// Stages returns the stages bucket, for watching stage documents.
func (s *Store) Stages() jetstream.KeyValue { return s.stages }

// SpecHash returns the content hash of a pipeline spec and its JSON form.
func SpecHash(p *pipeline.Pipeline) (string, []byte, error) {
	data, err := json.Marshal(p)
	if err != nil {
		return "", nil, fmt.Errorf("encode pipeline %s: %w", p.Name, err)
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:]), data, nil
}

// StoreSpec stores p in the pipelines bucket under its content hash,
// unless it is there already and younger than the refresh age, and
// returns the hash.
func (s *Store) StoreSpec(ctx context.Context, p *pipeline.Pipeline) (string, error) {
	hash, data, err := SpecHash(p)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	mod, known := s.stored[hash]
	s.mu.Unlock()
	if known && time.Since(mod) < s.refresh {
		return hash, nil
	}
	if info, err := s.specs.GetInfo(ctx, hash); err == nil && !info.Deleted && time.Since(info.ModTime) < s.refresh {
		s.remember(hash, info.ModTime, nil)
		return hash, nil
	} else if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return "", fmt.Errorf("pipeline spec %s: %w", hash, err)
	}
	info, err := s.specs.Put(ctx, jetstream.ObjectMeta{Name: hash, Description: p.Name}, bytes.NewReader(data))
	if err != nil {
		return "", fmt.Errorf("store pipeline spec %s: %w", hash, err)
	}
	s.remember(hash, info.ModTime, nil)
	return hash, nil
}

// Spec returns the pipeline spec stored under hash, prepared (indexed).
// The pipeline is shared: callers must not change it.
func (s *Store) Spec(ctx context.Context, hash string) (*pipeline.Pipeline, error) {
	s.mu.Lock()
	p := s.cache[hash]
	s.mu.Unlock()
	if p != nil {
		return p, nil
	}
	data, err := read(ctx, func(ctx context.Context) ([]byte, error) { return s.specs.GetBytes(ctx, hash) })
	if err != nil {
		return nil, fmt.Errorf("pipeline spec %s: %w", hash, err)
	}
	p = &pipeline.Pipeline{}
	if err := json.Unmarshal(data, p); err != nil {
		return nil, fmt.Errorf("decode pipeline spec %s: %w", hash, err)
	}
	p.Prepare()
	s.remember(hash, time.Time{}, p)
	return p, nil
}

// read does one read of a document, asking again while the server does
// not answer: a cluster electing a bucket's leader drops requests, and
// one dropped request would wait out all of ctx (bus.Establish). A read
// changes nothing, so asking twice is safe; writes are not retried here.
func read[T any](ctx context.Context, get func(context.Context) (T, error)) (T, error) {
	v, done, err := bus.Establish(ctx, get)
	if err == nil {
		done()
	}
	return v, err
}

// remember records a stored spec's modification time, or its decoded
// form, or both.
func (s *Store) remember(hash string, mod time.Time, p *pipeline.Pipeline) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.cache) >= maxSpecs {
		clear(s.cache)
	}
	if len(s.stored) >= maxSpecs {
		clear(s.stored)
	}
	if p != nil {
		s.cache[hash] = p
	}
	if !mod.IsZero() {
		s.stored[hash] = mod
	}
}

// Header reads a run document alone (no pipeline, no stages) and its
// revision. A missing run wraps ErrNoRun and jetstream.ErrKeyNotFound.
func (s *Store) Header(ctx context.Context, id string) (*wire.Run, uint64, error) {
	e, err := read(ctx, func(ctx context.Context) (jetstream.KeyValueEntry, error) { return s.runs.Get(ctx, id) })
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("run %s: %w (%w)", id, ErrNoRun, err)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get run %s: %w", id, err)
	}
	r, err := DecodeRun(e.Value())
	if err != nil {
		return nil, 0, fmt.Errorf("run %s: %w", id, err)
	}
	return r, e.Revision(), nil
}

// DecodeRun decodes a run document.
func DecodeRun(data []byte) (*wire.Run, error) {
	var r wire.Run
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("decode run document: %w", err)
	}
	return &r, nil
}

// Stage reads one stage document and its revision; a stage with no
// document (pending, or of a run that does not exist) is nil with
// revision 0.
func (s *Store) Stage(ctx context.Context, runID, key string) (*wire.StageRun, uint64, error) {
	return ReadStage(ctx, s.stages, runID, key)
}

// ReadStage reads one stage document from the stages bucket, as
// Store.Stage does, for a reader (an agent) that may read no other.
func ReadStage(ctx context.Context, stages jetstream.KeyValue, runID, key string) (*wire.StageRun, uint64, error) {
	e, err := read(ctx, func(ctx context.Context) (jetstream.KeyValueEntry, error) {
		return stages.Get(ctx, subjects.StageKey(runID, key))
	})
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("get stage %s/%s: %w", runID, key, err)
	}
	var st wire.StageRun
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return nil, 0, fmt.Errorf("decode stage %s/%s: %w", runID, key, err)
	}
	return &st, e.Revision(), nil
}

// Loaded is a run as read: assembled (pipeline and every stage filled
// in), with the revision of its document and of each stage's (0 for a
// stage with no document), in the order of Run.Stages.
type Loaded struct {
	Run  *wire.Run
	Rev  uint64
	Revs []uint64
}

// Load reads a run whole: its document, its pipeline spec and every stage
// document. A missing run wraps ErrNoRun.
func (s *Store) Load(ctx context.Context, id string) (*Loaded, error) {
	r, rev, err := s.Header(ctx, id)
	if err != nil {
		return nil, err
	}
	p, err := s.Spec(ctx, r.Spec)
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", id, err)
	}
	docs, err := s.stageDocs(ctx, id)
	if err != nil {
		return nil, err
	}
	l := Assemble(r, p, func(key string) (*wire.StageRun, uint64) {
		d, ok := docs[key]
		if !ok {
			return nil, 0
		}
		return &d.stage, d.rev
	})
	l.Rev = rev
	return l, nil
}

// Assemble fills a run document in with its pipeline and the stage
// documents doc returns (nil for a pending stage).
func Assemble(r *wire.Run, p *pipeline.Pipeline, doc func(key string) (*wire.StageRun, uint64)) *Loaded {
	r.Pipeline = p
	r.Stages = make([]wire.StageRun, len(p.Stages))
	revs := make([]uint64, len(p.Stages))
	for i, st := range p.Stages {
		if d, rev := doc(st.Key); d != nil {
			r.Stages[i], revs[i] = *d, rev
			r.Stages[i].Key = st.Key
			continue
		}
		r.Stages[i] = wire.PendingStage(st.Key, st.JobQueue())
	}
	return &Loaded{Run: r, Revs: revs}
}

type stageDoc struct {
	stage wire.StageRun
	rev   uint64
}

// stageDocs reads every stage document of a run, with one watch.
func (s *Store) stageDocs(ctx context.Context, id string) (map[string]stageDoc, error) {
	w, err := s.stages.Watch(ctx, subjects.RunStages(id), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read stages of %s: %w", id, err)
	}
	defer func() { _ = w.Stop() }()
	docs := map[string]stageDoc{}
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read stages of %s: %w", id, ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("read stages of %s: watch closed", id)
			}
			if e == nil {
				return docs, nil
			}
			var st wire.StageRun
			if err := json.Unmarshal(e.Value(), &st); err != nil {
				return nil, fmt.Errorf("decode stage %s: %w", e.Key(), err)
			}
			docs[subjects.StageOfKey(e.Key())] = stageDoc{stage: st, rev: e.Revision()}
		}
	}
}

// Get reads a run whole (see Load), without revisions.
func (s *Store) Get(ctx context.Context, id string) (*wire.Run, error) {
	l, err := s.Load(ctx, id)
	if err != nil {
		return nil, err
	}
	return l.Run, nil
}

// CreateRun stores a new run document; it wraps jetstream.ErrKeyExists
// when the run exists.
func (s *Store) CreateRun(ctx context.Context, r *wire.Run) (uint64, error) {
	data, err := json.Marshal(r.Document())
	if err != nil {
		return 0, fmt.Errorf("encode run %s: %w", r.ID, err)
	}
	rev, err := s.runs.Create(ctx, r.ID, data)
	if err != nil {
		return 0, fmt.Errorf("create run %s: %w", r.ID, err)
	}
	return rev, nil
}

// UpdateRun writes a run document over revision rev (compare-and-set) and
// returns the new revision; a lost race satisfies IsConflict.
func (s *Store) UpdateRun(ctx context.Context, r *wire.Run, rev uint64) (uint64, error) {
	data, err := json.Marshal(r.Document())
	if err != nil {
		return 0, fmt.Errorf("encode run %s: %w", r.ID, err)
	}
	rev, err = s.runs.Update(ctx, r.ID, data, rev)
	if err != nil {
		return 0, fmt.Errorf("update run %s: %w", r.ID, err)
	}
	return rev, nil
}

// StageWrite is one stage document to write over revision Rev (0: the
// stage has no document yet).
type StageWrite struct {
	Stage wire.StageRun
	Rev   uint64
}

// asyncWindow bounds the stage writes in flight at once; writeTimeout the
// wait for their acknowledgements.
const (
	asyncWindow  = 512
	writeTimeout = 10 * time.Second
)

// WriteStages writes stage documents of run runID, each by
// compare-and-set on its revision, published asynchronously. It returns
// the new revision of each write (0 where it failed) and the first error;
// a write that lost a race satisfies IsConflict. Writes that succeeded
// stay written whatever happened to the others.
func (s *Store) WriteStages(ctx context.Context, runID string, writes []StageWrite) ([]uint64, error) {
	revs := make([]uint64, len(writes))
	if len(writes) == 1 {
		// One write: a plain request, without the async machinery.
		w := writes[0]
		data, err := json.Marshal(w.Stage)
		if err != nil {
			return revs, fmt.Errorf("encode stage %s/%s: %w", runID, w.Stage.Key, err)
		}
		rev, err := s.stages.Update(ctx, subjects.StageKey(runID, w.Stage.Key), data, w.Rev)
		if err != nil {
			return revs, fmt.Errorf("write stage %s/%s: %w", runID, w.Stage.Key, err)
		}
		revs[0] = rev
		return revs, nil
	}
	var first error
	for start := 0; start < len(writes); start += asyncWindow {
		end := min(start+asyncWindow, len(writes))
		futures := make([]jetstream.PubAckFuture, end-start)
		for i := start; i < end; i++ {
			w := writes[i]
			data, err := json.Marshal(w.Stage)
			if err != nil {
				return revs, fmt.Errorf("encode stage %s/%s: %w", runID, w.Stage.Key, err)
			}
			subj := subjects.KVSubject(subjects.StagesBucket, subjects.StageKey(runID, w.Stage.Key))
			f, err := s.js.PublishAsync(subj, data, jetstream.WithExpectLastSequencePerSubject(w.Rev))
			if err != nil {
				if first == nil {
					first = fmt.Errorf("write stage %s/%s: %w", runID, w.Stage.Key, err)
				}
				break
			}
			futures[i-start] = f
		}
		timeout := time.NewTimer(writeTimeout)
		for j, f := range futures {
			if f == nil {
				continue
			}
			select {
			case ack := <-f.Ok():
				revs[start+j] = ack.Sequence
			case err := <-f.Err():
				if first == nil {
					first = fmt.Errorf("write stage %s/%s: %w", runID, writes[start+j].Stage.Key, err)
				}
			case <-timeout.C:
				return revs, fmt.Errorf("write stages of %s: no acknowledgement within %s", runID, writeTimeout)
			case <-ctx.Done():
				timeout.Stop()
				return revs, fmt.Errorf("write stages of %s: %w", runID, ctx.Err())
			}
		}
		timeout.Stop()
		if first != nil {
			return revs, first
		}
	}
	return revs, first
}

// IsConflict reports whether a compare-and-set write lost to another
// writer (10071 is the code of a single server, 10164 of replicated
// streams).
func IsConflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}
