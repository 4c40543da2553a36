package agent

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/wire"
)

// Bounds of one log batch, well under the server's max payload.
const (
	maxBatchLines = 512
	maxBatchBytes = 128 << 10
	// maxLineBytes splits longer lines so that one line never exceeds a batch.
	maxLineBytes = 16 << 10
)

// logStream batches a stage attempt's output lines and publishes them to
// its log subject: when a batch is full, when the oldest line has waited
// flush, and when the stream is closed. Writers block while a batch is
// being published, which throttles a stage that prints faster than the bus
// takes it.
type logStream struct {
	js      jetstream.JetStream
	subject string
	attempt int
	flush   time.Duration
	log     zerolog.Logger
	lines   chan wire.LogLine
	seq     atomic.Uint64 // stream sequence of the last published batch
}

func newLogStream(js jetstream.JetStream, subject string, attempt int, flush time.Duration, log zerolog.Logger) *logStream {
	return &logStream{js: js, subject: subject, attempt: attempt, flush: flush, log: log, lines: make(chan wire.LogLine, maxBatchLines)}
}

// write queues one line; it is safe for concurrent use until close.
func (l *logStream) write(stream, text string) {
	l.lines <- wire.LogLine{Stream: stream, Text: text, Time: time.Now()}
}

// close ends the stream; run publishes what is left and returns.
func (l *logStream) close() { close(l.lines) }

// lastSeq is the stream sequence of the last batch published; valid after
// run has returned.
func (l *logStream) lastSeq() uint64 { return l.seq.Load() }

// run publishes batches until close. The caller owns the goroutine.
func (l *logStream) run(ctx context.Context) {
	var (
		batch []wire.LogLine
		size  int
		timer = time.NewTimer(time.Hour)
	)
	timer.Stop()
	publish := func() {
		if len(batch) == 0 {
			return
		}
		data, err := json.Marshal(wire.LogBatch{Attempt: l.attempt, Lines: batch})
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			var ack *jetstream.PubAck
			ack, err = l.js.Publish(pctx, l.subject, data)
			cancel()
			if err == nil {
				l.seq.Store(ack.Sequence)
			}
		}
		if err != nil {
			l.log.Warn().Err(err).Int("lines", len(batch)).Msg("publish log batch")
		}
		batch, size = batch[:0], 0
		timer.Stop()
	}
	for {
		select {
		case line, ok := <-l.lines:
			if !ok {
				publish()
				return
			}
			if len(batch) == 0 {
				timer.Reset(l.flush)
			}
			batch = append(batch, line)
			size += len(line.Text) + 64
			if len(batch) >= maxBatchLines || size >= maxBatchBytes {
				publish()
			}
		case <-timer.C:
			publish()
		}
	}
}
