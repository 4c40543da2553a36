package client

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// DeadLetter is a stage job in the dead-letter stream.
type DeadLetter struct {
	// Seq is its sequence in the DLQ stream: the id weft dlq replay takes.
	Seq uint64 `json:"seq"`
	// RunID and Stage name the stage; Job is the job's attempt number.
	RunID string `json:"run_id"`
	Stage string `json:"stage"`
	Job   int    `json:"job"`
	// Subject is the job subject it was on (queue and tier).
	Subject string `json:"subject"`
	// Deliveries is how often it was delivered before it died.
	Deliveries int `json:"deliveries"`
	// Time is when it was dead-lettered.
	Time time.Time `json:"time"`
}

// ErrNoDeadLetter is returned by Replay for a sequence the DLQ does not hold.
var ErrNoDeadLetter = errors.New("client: no such dead letter")

// DeadLetters lists the jobs in the dead-letter stream, oldest first (not
// the dead triggers it also keeps).
func DeadLetters(ctx context.Context, js jetstream.JetStream) ([]DeadLetter, error) {
	st, err := js.Stream(ctx, subjects.DLQStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subjects.DLQStream, err)
	}
	info := st.CachedInfo()
	var out []DeadLetter
	for seq := info.State.FirstSeq; seq != 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("dead letter %d: %w", seq, err)
		}
		if subjects.IsTriggerDLQ(m.Subject) {
			continue // a dead trigger, not a job
		}
		out = append(out, deadLetter(m))
	}
	return out, nil
}

func deadLetter(m *jetstream.RawStreamMsg) DeadLetter {
	job, _ := strconv.Atoi(m.Header.Get(subjects.HeaderJob))
	n, _ := strconv.Atoi(m.Header.Get(subjects.HeaderDeliveries))
	return DeadLetter{
		Seq: m.Sequence, RunID: m.Header.Get(subjects.HeaderRun), Stage: m.Header.Get(subjects.HeaderStage),
		Job: job, Subject: m.Header.Get(subjects.HeaderSubject), Deliveries: n, Time: m.Time,
	}
}

// Replay asks the dispatcher to run a dead-lettered stage again, as a new
// attempt, and removes the job from the DLQ. It returns ErrNoDeadLetter
// for an unknown seq.
func Replay(ctx context.Context, js jetstream.JetStream, seq uint64) (*DeadLetter, error) {
	st, err := js.Stream(ctx, subjects.DLQStream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subjects.DLQStream, err)
	}
	m, err := st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("%w: %d", ErrNoDeadLetter, seq)
	}
	if err != nil {
		return nil, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	if subjects.IsTriggerDLQ(m.Subject) {
		return nil, fmt.Errorf("%w: %d is a dead trigger, not a job", ErrNoDeadLetter, seq)
	}
	dl := deadLetter(m)
	if err := ask(ctx, js, wire.Event{Type: wire.ReplayRequested, RunID: dl.RunID, Stage: dl.Stage}); err != nil {
		return nil, fmt.Errorf("replay %s/%s: %w", dl.RunID, dl.Stage, err)
	}
	if err := st.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("remove dead letter %d: %w", seq, err)
	}
	return &dl, nil
}
