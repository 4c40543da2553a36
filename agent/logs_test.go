package agent

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// numbered returns n output lines "line 00000", "line 00001"...: 11 bytes
// each with the newline.
func numbered(n int) []wire.LogLine {
	out := make([]wire.LogLine, n)
	for i := range out {
		out[i] = wire.LogLine{Stream: streamOutput, Text: fmt.Sprintf("line %05d", i)}
	}
	return out
}

// texts returns the text of each line.
func texts(lines []wire.LogLine) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = l.Text
	}
	return out
}

func TestLogCap(t *testing.T) {
	const limit = MinLogCap // head 32 KiB, tail 32 KiB: 2978 lines of 11 bytes each
	perHalf := int(limit/2) / 11
	tests := []struct {
		name           string
		lines          int
		head, tail     int // lines that go out as they come, and at the end
		dropped, bytes int64
	}{
		{"under the head", 100, 100, 0, 0, 0},
		{"exactly the head", perHalf, perHalf, 0, 0, 0},
		{"over the head, under the cap", perHalf + 10, perHalf, 10, 0, 0},
		{"exactly the cap", 2 * perHalf, perHalf, perHalf, 0, 0},
		{"over the cap", 10000, perHalf, perHalf, int64(10000 - 2*perHalf), int64(10000-2*perHalf) * 11},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newLogCap(limit)
			in := numbered(tt.lines)
			var head []wire.LogLine
			for _, l := range in {
				if c.keep(l) {
					head = append(head, l)
				}
			}
			rest := c.rest(time.Now())
			note := 0
			if tt.dropped > 0 {
				note = 1
				want := fmt.Sprintf("weft: output over its log cap of 64 KiB (weft agent --log-cap): %d lines, %d bytes", tt.dropped, tt.bytes)
				if rest[0].Stream != streamSystem || !strings.HasPrefix(rest[0].Text, want) {
					t.Fatalf("note = %+v, want a system line starting %q", rest[0], want)
				}
			}
			tail := rest[note:]
			if len(head) != tt.head || len(tail) != tt.tail || c.droppedLines != tt.dropped || c.droppedBytes != tt.bytes {
				t.Fatalf("%d lines: head %d, tail %d, dropped %d lines %d bytes; want %d, %d, %d, %d",
					tt.lines, len(head), len(tail), c.droppedLines, c.droppedBytes, tt.head, tt.tail, tt.dropped, tt.bytes)
			}
			// The head is the first lines, the tail the last, in order.
			want := append(texts(in[:tt.head]), texts(in[len(in)-tt.tail:])...)
			if got := append(texts(head), texts(tail)...); strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("kept lines are not the first %d and the last %d", tt.head, tt.tail)
			}
			if kept := int64(len(head)+len(tail)) * 11; kept > limit {
				t.Errorf("kept %d bytes, over the %d cap", kept, limit)
			}
		})
	}
}

// The tail holds at most maxTailLines lines, however short.
func TestLogCapBoundsTailLines(t *testing.T) {
	c := newLogCap(DefaultLogCap)
	c.headLeft = 0
	for range 3 * maxTailLines {
		c.keep(wire.LogLine{Text: ""})
	}
	if c.n != maxTailLines || c.droppedLines != 2*maxTailLines {
		t.Errorf("tail %d lines, dropped %d; want %d and %d", c.n, c.droppedLines, maxTailLines, 2*maxTailLines)
	}
}

// An attempt's batches are numbered from 1, consecutively; over its cap
// the stream holds the head, the note and the tail, and lastSeq is the
// last batch's stream sequence.
func TestLogStreamNumbersBatchesAndCaps(t *testing.T) {
	b := scanBus(t)
	subject := subjects.Logs("01RUN", "s")
	l := newLogStream(b.JS, subject, 3, time.Hour, MinLogCap, zerolog.Nop())
	var wg sync.WaitGroup
	wg.Go(func() { l.run(t.Context()) })
	in := numbered(10000)
	for _, line := range in {
		l.write(streamOutput, line.Text)
	}
	l.close()
	wg.Wait()

	c, err := b.JS.OrderedConsumer(t.Context(), subjects.LogsStream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var (
		lines   []wire.LogLine
		seq     uint64
		lastSeq uint64
	)
	info, err := c.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(int(info.NumPending))
	if err != nil {
		t.Fatal(err)
	}
	for msg := range msgs.Messages() {
		var batch wire.LogBatch
		if err := json.Unmarshal(msg.Data(), &batch); err != nil {
			t.Fatal(err)
		}
		if batch.Attempt != 3 || batch.Seq != seq+1 {
			t.Fatalf("batch attempt %d seq %d after seq %d; want attempt 3, seq %d", batch.Attempt, batch.Seq, seq, seq+1)
		}
		seq = batch.Seq
		meta, _ := msg.Metadata()
		lastSeq = meta.Sequence.Stream
		lines = append(lines, batch.Lines...)
	}
	if err := msgs.Error(); err != nil {
		t.Fatal(err)
	}
	if seq < 2 || l.lastSeq() != lastSeq {
		t.Fatalf("%d batches, lastSeq %d; want several, and lastSeq the last's stream sequence %d", seq, l.lastSeq(), lastSeq)
	}
	perHalf := int(MinLogCap/2) / 11
	if len(lines) != 2*perHalf+1 {
		t.Fatalf("%d lines stored, want %d of head, a note and %d of tail", len(lines), perHalf, perHalf)
	}
	note := lines[perHalf]
	dropped := 10000 - 2*perHalf
	if want := fmt.Sprintf("%d lines, %d bytes", dropped, dropped*11); note.Stream != streamSystem || !strings.Contains(note.Text, want) || !strings.Contains(note.Text, "64 KiB") {
		t.Errorf("note %+v, want a system line naming %q and the 64 KiB cap", note, want)
	}
	for i, line := range lines {
		if line.Time.IsZero() {
			t.Fatalf("line %d has no time", i)
		}
	}
	want := append(texts(in[:perHalf]), texts(in[len(in)-perHalf:])...)
	got := append(texts(lines[:perHalf]), texts(lines[perHalf+1:])...)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("stored lines are not the first %d and the last %d written", perHalf, perHalf)
	}
}
