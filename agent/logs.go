package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/internal/bytesize"
	"github.com/weft-ci/weft/wire"
)

// Bounds of one log batch, well under the server's max payload.
const (
	maxBatchLines = 512
	maxBatchBytes = 128 << 10
)

// MaxLineBytes is the longest line of output a log batch carries: a
// longer line is split into consecutive lines of MaxLineBytes (the last
// one shorter), so that one line never exceeds a batch.
const MaxLineBytes = 16 << 10

// The log cap: how much of an attempt's output the logs stream keeps.
const (
	// DefaultLogCap is the log cap of an attempt of a stage by default:
	// 256 MiB. Logs are kept as long as runs (30 days by default) on the
	// server's disk, so the cap bounds what one runaway stage (a loop
	// printing forever) costs there and what a follower has to read, while
	// staying far above what a person reads of a build log: a 100 MB
	// verbose test log is kept whole. Buildkite caps a job's log at 1 GiB;
	// a quarter of that leaves room for many stages per server.
	DefaultLogCap int64 = 256 << 20
	// DefaultLogTail is how much of the end of an attempt's output over
	// its cap is kept: the last 1 MiB (at most maxTailLines lines), or half
	// the cap under 2 MiB. It is held in the agent's memory until the
	// stage ends.
	DefaultLogTail int64 = 1 << 20
	// MinLogCap is the smallest log cap an agent takes: four of the
	// longest lines (MaxLineBytes), so that the head and the tail each
	// hold at least two.
	MinLogCap int64 = 4 * MaxLineBytes
	// maxTailLines bounds the lines the tail holds, so that its memory
	// stays near DefaultLogTail however short the lines are.
	maxTailLines = 16 << 10
)

// logStream batches a stage attempt's output lines and publishes them to
// its log subject: when a batch is full, when the oldest line has waited
// flush, and when the stream is closed. Writers block while a batch is
// being published, which throttles a stage that prints faster than the bus
// takes it. Batches are numbered from 1 (wire.LogBatch.Seq); a number
// whose publish failed is not reused, so the gap shows.
//
// Output over the attempt's cap (logCap) is not published as it comes:
// past the head the last lines are held and published, after a note of
// what was dropped, when the stream is closed.
type logStream struct {
	js      jetstream.JetStream
	subject string
	attempt int
	flush   time.Duration
	log     zerolog.Logger
	lines   chan wire.LogLine
	cap     *logCap       // owned by run
	seq     atomic.Uint64 // stream sequence of the last published batch
	// id makes the message ids of this stream's batches its own: another
	// delivery of the same attempt numbers its batches from 1 again.
	id string
}

// newLogStream returns the log stream of an attempt whose output is
// capped at limit bytes (at least MinLogCap).
func newLogStream(js jetstream.JetStream, subject string, attempt int, flush time.Duration, limit int64, log zerolog.Logger) *logStream {
	return &logStream{
		js: js, subject: subject, attempt: attempt, flush: flush, log: log,
		lines: make(chan wire.LogLine, maxBatchLines), cap: newLogCap(limit), id: ulid.Make().String(),
	}
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

// logPublishTimeout bounds the tries of one log batch: the output waits
// (its pipe fills, and the stage's writes block) while the server cannot
// be reached, for up to this long, and is dropped with a warning after.
const logPublishTimeout = 30 * time.Second

// run publishes batches until close, then the tail of output over the
// cap. The caller owns the goroutine.
func (l *logStream) run(ctx context.Context) {
	var (
		batch []wire.LogLine
		size  int
		n     uint64 // batches numbered so far
		timer = time.NewTimer(time.Hour)
	)
	timer.Stop()
	publish := func() {
		if len(batch) == 0 {
			return
		}
		n++
		data, err := json.Marshal(wire.LogBatch{Attempt: l.attempt, Seq: n, Lines: batch})
		if err == nil {
			var ack *jetstream.PubAck
			ack, _, err = publishRetrying(ctx, l.js, l.subject, data, logPublishTimeout,
				jetstream.WithMsgID(fmt.Sprintf("log.%s.%d", l.id, n)))
			if err == nil {
				l.seq.Store(ack.Sequence)
			}
		}
		if err != nil {
			l.log.Warn().Err(err).Uint64("log_batch", n).Int("lines", len(batch)).Msg("publish log batch")
		}
		batch, size = batch[:0], 0
		timer.Stop()
	}
	add := func(line wire.LogLine) {
		if len(batch) == 0 {
			timer.Reset(l.flush)
		}
		batch = append(batch, line)
		size += len(line.Text) + 64
		if len(batch) >= maxBatchLines || size >= maxBatchBytes {
			publish()
		}
	}
	for {
		select {
		case line, ok := <-l.lines:
			if !ok {
				for _, line := range l.cap.rest(time.Now()) {
					add(line)
				}
				publish()
				return
			}
			if l.cap.keep(line) {
				add(line)
			}
		case <-timer.C:
			publish()
		}
	}
}

// logCap keeps an attempt's output within its cap. The head, the first
// limit minus tail bytes, goes out as it comes; from the first line that
// does not fit in it, the last lines that fit in tail bytes (and
// maxTailLines) are held, and the lines they push out are dropped and
// counted. A line costs its text and its newline. It decides only; the
// log stream's goroutine owns it.
type logCap struct {
	limit, tail int64
	headLeft    int64 // bytes the head may still take
	held        bool  // the head is full: every later line goes to the tail
	// ring is the tail: n lines from first, wrapping; allocated when the
	// head fills.
	ring      []wire.LogLine
	first, n  int
	ringBytes int64
	// droppedLines and droppedBytes count what the tail pushed out.
	droppedLines, droppedBytes int64
}

// newLogCap returns the cap of an attempt's output at limit bytes.
func newLogCap(limit int64) *logCap {
	tail := min(DefaultLogTail, limit/2)
	return &logCap{limit: limit, tail: tail, headLeft: limit - tail}
}

// keep takes the next line and reports whether it goes out now, in the
// head; when it does not, the tail holds it.
func (c *logCap) keep(line wire.LogLine) bool {
	cost := int64(len(line.Text)) + 1
	if !c.held && cost <= c.headLeft {
		c.headLeft -= cost
		return true
	}
	if !c.held {
		c.held = true
		c.ring = make([]wire.LogLine, maxTailLines)
	}
	for c.n > 0 && (c.ringBytes+cost > c.tail || c.n == len(c.ring)) {
		c.dropFirst()
	}
	if cost > c.tail {
		// Longer than the whole tail (a cap under MinLogCap).
		c.droppedLines++
		c.droppedBytes += cost
		return false
	}
	c.ring[(c.first+c.n)%len(c.ring)] = line
	c.n++
	c.ringBytes += cost
	return false
}

// dropFirst drops the oldest line of the tail.
func (c *logCap) dropFirst() {
	cost := int64(len(c.ring[c.first].Text)) + 1
	c.ring[c.first] = wire.LogLine{}
	c.first = (c.first + 1) % len(c.ring)
	c.n--
	c.ringBytes -= cost
	c.droppedLines++
	c.droppedBytes += cost
}

// rest returns what follows the head once the output ended: when lines
// were dropped, a system line at now that says how many and names the
// cap, then the tail.
func (c *logCap) rest(now time.Time) []wire.LogLine {
	out := make([]wire.LogLine, 0, c.n+1)
	if c.droppedLines > 0 {
		out = append(out, wire.LogLine{Stream: streamSystem, Time: now, Text: fmt.Sprintf(
			"weft: output over its log cap of %s (weft agent --log-cap): %d lines, %d bytes (%s) dropped here; the last %d lines follow",
			bytesize.Format(c.limit), c.droppedLines, c.droppedBytes, bytesize.Format(c.droppedBytes), c.n)})
	}
	for i := range c.n {
		out = append(out, c.ring[(c.first+i)%len(c.ring)])
	}
	return out
}
