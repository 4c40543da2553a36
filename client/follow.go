package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Update is one thing that happened to a followed run: a stage changed
// state, a line of output arrived, or the run ended. Exactly one of Stage,
// Line or (for the last update) Done is set; Run is the run document as of
// the update.
type Update struct {
	// Run is the latest run document.
	Run *wire.Run
	// Stage is the stage whose state or attempt changed.
	Stage *wire.StageRun
	// Line is a line of output.
	Line *Line
	// Done is set on the last update: the run is terminal and all of its
	// output has been delivered.
	Done bool
}

// Line is a line of a stage's output.
type Line struct {
	// Stage is the stage key.
	Stage string `json:"stage"`
	// Attempt is the attempt that wrote it.
	Attempt int `json:"attempt"`
	// Seq is the number of the attempt's log batch that carried it
	// (wire.LogBatch.Seq): consecutive from 1, so a gap says a batch was
	// lost.
	Seq uint64 `json:"seq"`
	wire.LogLine
}

// logDrainTimeout bounds how long Follow waits for output a finished stage
// reported but that has not arrived.
const logDrainTimeout = 10 * time.Second

// Bounds of the log batches a reader holds: what the ordered consumer
// buffers or fetches at once (a batch is at most the server's 1 MiB
// payload, in practice 128 KiB), and how many messages wait between a
// follower's consumer and its caller. A reader's memory stays a few MiB
// however much a stage prints.
const (
	logBufferBytes = 4 << 20
	logQueue       = 8
)

// maxRewatch bounds how often a follow starts its run watch again when
// the watch missed a run document a read finds.
const maxRewatch = 3

// Errors that Follow and Logs wrap.
var (
	// ErrNoRun: the run's document does not exist.
	ErrNoRun = errors.New("client: no such run")
	// ErrNoStage: the run's pipeline has no stage of that key.
	ErrNoStage = errors.New("client: no such stage")
)

// Follow calls fn for every update of run runID, in order, from its current
// state until it ends, and returns the final run. It returns early with
// ctx's error when ctx ends, and at once with an error wrapping ErrNoRun
// when the run does not exist (Submit returns only once it does). The
// run an Update carries is the follower's own, changed in place as the
// run goes: fn must copy what it keeps.
func Follow(ctx context.Context, js jetstream.JetStream, runID string, fn func(Update)) (*wire.Run, error) {
	return follow(ctx, js, runID, "", fn)
}

// FollowStage is Follow of one stage of the run: its document's changes
// and its output, until it is terminal; it returns the run as it was
// then. A stage the run's pipeline does not have wraps ErrNoStage.
func FollowStage(ctx context.Context, js jetstream.JetStream, runID, stage string, fn func(Update)) (*wire.Run, error) {
	return follow(ctx, js, runID, stage, fn)
}

// follow is Follow, or with a stage key Follow of that stage alone: its
// document's changes and its output, until the stage is terminal (a
// finish followed by a retry leaves it queued, not terminal) and all of
// its output arrived, which its document's LogSeq says. A stage the
// run's pipeline does not have wraps ErrNoStage.
func follow(ctx context.Context, js jetstream.JetStream, runID, stage string, fn func(Update)) (*wire.Run, error) {
	rs, opened, err := bus.Establish(ctx, func(ctx context.Context) (*runstore.Store, error) { return runstore.Open(ctx, js) })
	if err != nil {
		return nil, err
	}
	opened()
	hw, stopHW, err := bus.Establish(ctx, func(ctx context.Context) (jetstream.KeyWatcher, error) { return rs.Runs().Watch(ctx, runID) })
	if err != nil {
		return nil, fmt.Errorf("watch run %s: %w", runID, err)
	}
	defer stopHW()
	defer func() { _ = hw.Stop() }()
	rewatched := 0 // watches started again, see below
	docs, logSubject := subjects.RunStages(runID), subjects.RunLogs(runID)
	if stage != "" {
		docs, logSubject = subjects.StageKey(runID, stage), subjects.Logs(runID, stage)
	}
	sw, stopSW, err := bus.Establish(ctx, func(ctx context.Context) (jetstream.KeyWatcher, error) {
		return rs.Stages().Watch(ctx, docs, jetstream.IgnoreDeletes())
	})
	if err != nil {
		return nil, fmt.Errorf("watch stages of %s: %w", runID, err)
	}
	defer stopSW()
	defer func() { _ = sw.Stop() }()

	logs, stopLogs, err := bus.Establish(ctx, func(ctx context.Context) (jetstream.Consumer, error) {
		return js.OrderedConsumer(ctx, subjects.LogsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{logSubject}})
	})
	if err != nil {
		return nil, fmt.Errorf("follow logs of %s: %w", runID, err)
	}
	defer stopLogs()
	it, err := logs.Messages(jetstream.PullMaxBytes(logBufferBytes))
	if err != nil {
		return nil, fmt.Errorf("follow logs of %s: %w", runID, err)
	}
	lines := make(chan jetstream.Msg, logQueue)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(lines)
		for {
			msg, err := it.Next()
			if err != nil {
				return
			}
			select {
			case lines <- msg:
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() { it.Stop(); <-done }()

	f := follower{fn: fn, runID: runID, key: stage, early: map[string]wire.StageRun{}}
	var drain <-chan time.Time
	for {
		if f.run != nil && f.over() {
			if f.complete() {
				f.flush()
				fn(Update{Run: f.run, Done: true})
				return f.run, nil
			}
			if drain == nil {
				drain = time.After(logDrainTimeout)
			}
		}
		select {
		case <-ctx.Done():
			return f.run, ctx.Err()
		case <-drain:
			// Give up on output that never came, and read the stages
			// whose last change did not arrive.
			final, err := rs.Get(ctx, runID)
			if err != nil {
				return f.run, err
			}
			for _, s := range final.Stages {
				if f.key == "" || s.Key == f.key {
					f.stage(s)
				}
			}
			f.seen = f.maxLog
		case e, ok := <-hw.Updates():
			if !ok {
				return f.run, errors.New("client: run watch closed")
			}
			if e == nil && f.run == nil {
				// The watch says the run has no document. It can say so
				// of a document written while it started: a read decides.
				if _, _, err := rs.Header(ctx, runID); !errors.Is(err, runstore.ErrNoRun) {
					if rewatched >= maxRewatch || err != nil {
						return nil, fmt.Errorf("follow run %s: %w", runID, errors.Join(ErrNoRun, err))
					}
					rewatched++
					_ = hw.Stop()
					if hw, err = rs.Runs().Watch(ctx, runID); err != nil {
						return nil, fmt.Errorf("watch run %s: %w", runID, err)
					}
					continue
				}
				return nil, fmt.Errorf("follow run %s: %w", runID, ErrNoRun)
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			h, err := runstore.DecodeRun(e.Value())
			if err != nil {
				return f.run, fmt.Errorf("run %s: %w", runID, err)
			}
			if f.run == nil {
				p, err := rs.Spec(ctx, h.Spec)
				if err != nil {
					return nil, fmt.Errorf("follow run %s: %w", runID, err)
				}
				if stage != "" && p.Index(stage) < 0 {
					return nil, fmt.Errorf("follow run %s: stage %q: %w", runID, stage, ErrNoStage)
				}
				f.start(runstore.Assemble(h, p, func(string) (*wire.StageRun, uint64) { return nil, 0 }).Run)
				continue
			}
			h.Pipeline, h.Stages = f.run.Pipeline, f.run.Stages
			*f.run = *h
		case e, ok := <-sw.Updates():
			if !ok {
				return f.run, errors.New("client: stage watch closed")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var s wire.StageRun
			if err := json.Unmarshal(e.Value(), &s); err != nil {
				return f.run, fmt.Errorf("decode stage %s: %w", e.Key(), err)
			}
			s.Key = subjects.StageOfKey(e.Key())
			f.stage(s)
		case msg, ok := <-lines:
			if !ok {
				return f.run, fmt.Errorf("client: logs of %s: %w", runID, ctx.Err())
			}
			f.line(msg)
		}
	}
}

// follower turns run and stage document revisions and log batches into
// ordered updates.
type follower struct {
	fn    func(Update)
	runID string
	// key is the stage followed alone; empty for the whole run.
	key string
	run *wire.Run
	// early holds stage documents that arrived before the run's.
	early map[string]wire.StageRun
	// ended counts the run's stages in a terminal state; maxLog is the
	// highest log sequence a finished stage reported.
	ended  int
	maxLog uint64
	seen   uint64 // stream sequence of the last log batch delivered
	// held are stage transitions waiting, in order, for the output of a
	// finished stage before them.
	held []wire.StageRun
}

// over reports whether what is followed has ended, its output perhaps
// not all delivered yet: the run, or the stage followed alone (which the
// run's end implies, should its last document not have arrived).
func (f *follower) over() bool {
	return f.run.State.Terminal() || (f.key != "" && f.run.Stages[f.run.Pipeline.Index(f.key)].State.Terminal())
}

// complete reports whether what is followed has ended and all of its
// output was delivered: every stage of the run is terminal and the
// highest log sequence they reported was seen, or the stage followed
// alone is terminal and its last batch was seen.
func (f *follower) complete() bool {
	if f.key == "" {
		return f.run.State.Terminal() && f.ended == len(f.run.Stages) && f.seen >= f.maxLog
	}
	s := f.run.Stages[f.run.Pipeline.Index(f.key)]
	return s.State.Terminal() && f.seen >= s.LogSeq
}

// start takes the run as first read, its stages pending, and applies the
// stage documents that came before it.
func (f *follower) start(r *wire.Run) {
	f.run = r
	for _, s := range r.Stages {
		if s.State.Terminal() {
			f.ended++
		}
	}
	for _, s := range r.Stages {
		if e, ok := f.early[s.Key]; ok {
			f.stage(e)
		}
	}
	f.early = nil
}

// stage applies a stage document.
func (f *follower) stage(s wire.StageRun) {
	if f.run == nil {
		f.early[s.Key] = s
		return
	}
	i := f.run.Pipeline.Index(s.Key)
	if i < 0 {
		return
	}
	prev := f.run.Stages[i]
	if prev.State.Terminal() {
		f.ended--
	}
	if s.State.Terminal() {
		f.ended++
		f.maxLog = max(f.maxLog, s.LogSeq)
	}
	f.run.Stages[i] = s
	if prev.State == s.State && prev.Attempt == s.Attempt {
		return
	}
	f.held = append(f.held, s)
	f.flush()
}

func (f *follower) line(msg jetstream.Msg) {
	if meta, err := msg.Metadata(); err == nil {
		f.seen = meta.Sequence.Stream
	}
	var b wire.LogBatch
	if err := json.Unmarshal(msg.Data(), &b); err == nil {
		stage := subjects.LogStage(msg.Subject())
		for _, l := range b.Lines {
			f.fn(Update{Run: f.run, Line: &Line{Stage: stage, Attempt: b.Attempt, Seq: b.Seq, LogLine: l}})
		}
	}
	f.flush()
}

// flush delivers held transitions from the front until one is a finished
// stage whose output has not all been delivered.
func (f *follower) flush() {
	n := 0
	for _, s := range f.held {
		if s.State.Terminal() && s.LogSeq > f.seen {
			break
		}
		f.fn(Update{Run: f.run, Stage: &s})
		n++
	}
	f.held = f.held[n:]
}
