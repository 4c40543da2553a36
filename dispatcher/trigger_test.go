package dispatcher

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

func TestDecodeTrigger(t *testing.T) {
	tests := []struct {
		data    string
		id      string
		invalid bool
	}{
		{`{"id": "d-1", "file": "p.yml", "pipeline": "x"}`, "d-1", false},
		{`not json`, "", true},
		{`{"file": "p.yml"}`, "", true},
		{`{"id": "d-2", "time": "yesterday"}`, "d-2", true},
	}
	for _, tt := range tests {
		tr, err := decodeTrigger([]byte(tt.data))
		if tr.ID != tt.id || errors.Is(err, errMalformedTrigger) != tt.invalid || (err != nil) != tt.invalid {
			t.Errorf("decodeTrigger(%q) = %q, %v; want id %q, malformed %v", tt.data, tr.ID, err, tt.id, tt.invalid)
		}
	}
}

func TestPermanentTriggerError(t *testing.T) {
	tests := []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("%w: no id", errMalformedTrigger), true},
		{fmt.Errorf("create run x: %w", nats.ErrMaxPayload), true},
		{fmt.Errorf("create run x: %w", &jetstream.APIError{ErrorCode: jetstream.JSErrCodeStreamMessageExceedsMaximum}), true},
		{fmt.Errorf("create run x: %w", &jetstream.APIError{ErrorCode: 10077, Description: "maximum messages exceeded"}), false},
		{fmt.Errorf("create run x: %w", nats.ErrTimeout), false},
		{errors.New("anything else"), false},
	}
	for _, tt := range tests {
		if got := permanentTriggerError(tt.err); got != tt.want {
			t.Errorf("permanentTriggerError(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

// widest returns a pipeline of MaxStages one-command stages with
// 63-character keys on a 63-character queue.
func widest(t *testing.T) *pipeline.Pipeline {
	t.Helper()
	var b strings.Builder
	b.WriteString("name: wide\nqueue: " + strings.Repeat("q", 63) + "\nstages:\n")
	for i := range pipeline.MaxStages {
		fmt.Fprintf(&b, "  - {key: %s%05d, commands: [true]}\n", strings.Repeat("k", 58), i)
	}
	if b.Len() > pipeline.MaxFileSize {
		// Keys this long do not fit MaxStages in one file: take as many
		// as do.
		text := b.String()[:pipeline.MaxFileSize]
		b.Reset()
		b.WriteString(text[:strings.LastIndexByte(text, '\n')+1])
	}
	p, err := pipeline.Parse("p.yml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// What a run writes does not grow with its pipeline: the run document of
// the widest pipeline is the size of a one-stage run's, and a stage's
// document, finished with its times, a long agent id and a message, is a
// few hundred bytes.
func TestRunDocumentsDoNotGrowWithThePipeline(t *testing.T) {
	trig := wire.Trigger{ID: "t", File: "p.yml", Repo: "acme/api", Branch: "main", Commit: strings.Repeat("c", 40)}
	finish := func(r *wire.Run) {
		r.Spec = strings.Repeat("f", 64)
		r.Admitted, r.Started, r.Finished, r.Lease, r.State = t0, t0, t0, subjects.LeaseKey(r.Repo, 2), wire.RunFailed
	}
	wide := newRun("01JZZZZZZZZZZZZZZZZZZZZZZZ", trig, widest(t), 1, t0)
	one, err := pipeline.Parse("p.yml", []byte("name: wide\nstages: [{key: a, commands: [true]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	narrow := newRun("01JZZZZZZZZZZZZZZZZZZZZZZZ", trig, one, 1, t0)
	finish(wide)
	finish(narrow)
	if err := (&Dispatcher{}).fits(wide); err != nil {
		t.Fatalf("fits(run of %d stages) = %v", len(wide.Stages), err)
	}
	wd, nd := encodeHeader(wide), encodeHeader(narrow)
	t.Logf("run documents: %d bytes for %d stages, %d bytes for 1", len(wd), len(wide.Stages), len(nd))
	if len(wd)-len(nd) > len(strconv.Itoa(len(wide.Stages))) {
		t.Errorf("the run document of %d stages is %d bytes, of 1 stage %d: it grows with the pipeline", len(wide.Stages), len(wd), len(nd))
	}
	s := wide.Stages[len(wide.Stages)-1]
	s.State, s.Attempt, s.Job, s.Agent, s.ExitCode = wire.StageFailed, 11, 11, "build-host-0042-"+strings.Repeat("A", 26), 255
	s.Category, s.Message, s.LogSeq, s.JobSeq = wire.CategoryCommand, clip("exit status 255: "+strings.Repeat("m", 1000)), 1<<40, 1<<40
	s.NotBefore, s.Queued, s.Started, s.Finished = t0, t0, t0, t0
	data, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a finished stage's document: %d bytes", len(data))
	if len(data) > 1024 {
		t.Errorf("a finished stage's document is %d bytes, want at most 1 KiB", len(data))
	}
}

func TestFitsRefusesWhatCannotBeWritten(t *testing.T) {
	p, err := pipeline.Parse("p.yml", []byte("name: x\nstages: [{key: a, commands: [true]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := newRun("01JZZZZZZZZZZZZZZZZZZZZZZZ", wire.Trigger{ID: "t", File: "p.yml", Branch: strings.Repeat("b", subjects.MaxPayload)}, p, 1, t0)
	err = (&Dispatcher{}).fits(r)
	if !errors.Is(err, errRunTooLarge) || !strings.Contains(err.Error(), "p.yml: the run document would need 1026 KiB (with the repository") || !strings.Contains(err.Error(), "over the limit of 1024 KiB") {
		t.Errorf("fits(run with a 1 MiB branch) = %v, want errRunTooLarge naming the file, the size and the limit", err)
	}
	if !permanentTriggerError(err) {
		t.Errorf("permanentTriggerError(%v) = false", err)
	}
}

func TestHeaderValue(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"one line", 100, "one line"},
		{"p.yml:1:1: a\np.yml:2:1: b\r\n", 100, "p.yml:1:1: a | p.yml:2:1: b"},
		{strings.Repeat("x", 20), 10, "xxxxxxx..."},
		{"ééééé", 8, "éé..."},
	}
	for _, tt := range tests {
		if got := headerValue(tt.in, tt.n); got != tt.want {
			t.Errorf("headerValue(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}
