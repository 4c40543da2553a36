package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

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
	wire.LogLine
}

// logDrainTimeout bounds how long Follow waits for output a finished stage
// reported but that has not arrived.
const logDrainTimeout = 10 * time.Second

// ErrNoRun is matched by Follow's error for a run whose document does not
// exist.
var ErrNoRun = errors.New("client: no such run")

// Follow calls fn for every update of run runID, in order, from its current
// state until it ends, and returns the final run document. It returns early
// with ctx's error when ctx ends, and at once with an error wrapping
// ErrNoRun when the run does not exist (Submit returns only once it does).
func Follow(ctx context.Context, js jetstream.JetStream, runID string, fn func(Update)) (*wire.Run, error) {
	runs, err := js.KeyValue(ctx, subjects.RunsBucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", subjects.RunsBucket, err)
	}
	w, err := runs.Watch(ctx, runID)
	if err != nil {
		return nil, fmt.Errorf("watch run %s: %w", runID, err)
	}
	defer func() { _ = w.Stop() }()

	logs, err := js.OrderedConsumer(ctx, subjects.LogsStream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subjects.RunLogs(runID)},
	})
	if err != nil {
		return nil, fmt.Errorf("follow logs of %s: %w", runID, err)
	}
	it, err := logs.Messages()
	if err != nil {
		return nil, fmt.Errorf("follow logs of %s: %w", runID, err)
	}
	lines := make(chan jetstream.Msg, 256)
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

	f := follower{fn: fn, runID: runID}
	var drain <-chan time.Time
	for {
		if f.run != nil && f.run.State.Terminal() && f.seen >= f.maxLogSeq() {
			f.flush()
			fn(Update{Run: f.run, Done: true})
			return f.run, nil
		}
		select {
		case <-ctx.Done():
			return f.run, ctx.Err()
		case <-drain:
			f.seen = f.maxLogSeq() // give up on output that never came
		case e, ok := <-w.Updates():
			if !ok {
				return f.run, errors.New("client: run watch closed")
			}
			if e == nil && f.run == nil {
				return nil, fmt.Errorf("follow run %s: %w", runID, ErrNoRun)
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var r wire.Run
			if err := json.Unmarshal(e.Value(), &r); err != nil {
				return f.run, fmt.Errorf("decode run %s: %w", runID, err)
			}
			f.update(&r)
			if r.State.Terminal() && drain == nil {
				drain = time.After(logDrainTimeout)
			}
		case msg, ok := <-lines:
			if !ok {
				return f.run, fmt.Errorf("client: logs of %s: %w", runID, ctx.Err())
			}
			f.line(msg)
		}
	}
}

// follower turns run document revisions and log batches into ordered
// updates.
type follower struct {
	fn    func(Update)
	runID string
	run   *wire.Run
	seen  uint64 // stream sequence of the last log batch delivered
	// held are stage transitions waiting, in order, for the output of a
	// finished stage before them.
	held []wire.StageRun
}

func (f *follower) update(r *wire.Run) {
	prev := f.run
	f.run = r
	for i, s := range r.Stages {
		if prev != nil && i < len(prev.Stages) && prev.Stages[i].State == s.State && prev.Stages[i].Attempt == s.Attempt {
			continue
		}
		f.held = append(f.held, s)
	}
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
			f.fn(Update{Run: f.run, Line: &Line{Stage: stage, Attempt: b.Attempt, LogLine: l}})
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

func (f *follower) maxLogSeq() uint64 {
	var m uint64
	if f.run != nil {
		for _, s := range f.run.Stages {
			m = max(m, s.LogSeq)
		}
	}
	return m
}
