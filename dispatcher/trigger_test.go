package dispatcher

import (
	"encoding/json"
	"errors"
	"fmt"
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

// widest returns a pipeline of one-command stages with 63-character keys
// on a 63-character queue, as many as pipeline.MaxSize admits.
func widest(t *testing.T) *pipeline.Pipeline {
	t.Helper()
	parse := func(n int) (*pipeline.Pipeline, error) {
		var b strings.Builder
		b.WriteString("name: wide\nqueue: " + strings.Repeat("q", 63) + "\nstages:\n")
		for i := range n {
			fmt.Fprintf(&b, "  - {key: %s%05d, commands: [true]}\n", strings.Repeat("k", 58), i)
		}
		return pipeline.Parse("p.yml", []byte(b.String()))
	}
	lo, hi := 1, 10_000 // parse(lo) passes, parse(hi) fails
	for hi-lo > 1 {
		if mid := (lo + hi) / 2; func() bool { _, err := parse(mid); return err == nil }() {
			lo = mid
		} else {
			hi = mid
		}
	}
	p, err := parse(lo)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The limit leaves room: a run of the widest pipeline Parse admits, with
// every stage finished with its times, a long agent id and a message,
// still fits in one message.
func TestARunOfTheWidestPipelineFits(t *testing.T) {
	p := widest(t)
	d := &Dispatcher{}
	r := newRun("01JZZZZZZZZZZZZZZZZZZZZZZZ", wire.Trigger{ID: "t", File: "p.yml", Repo: "acme/api", Branch: "main", Commit: strings.Repeat("c", 40)}, p, 1, t0)
	if err := d.fits(r); err != nil {
		t.Fatalf("fits(new run of %d stages) = %v", len(r.Stages), err)
	}
	for i := range r.Stages {
		s := &r.Stages[i]
		s.State, s.Attempt, s.Job, s.Agent, s.ExitCode = wire.StageFailed, 11, 11, "build-host-0042-"+strings.Repeat("A", 26), 255
		s.Category, s.Message, s.LogSeq, s.JobSeq = wire.CategoryCommand, "exit status 255: "+strings.Repeat("m", 100), 1<<40, 1<<40
		s.NotBefore, s.Queued, s.Started, s.Heartbeat, s.Finished = t0, t0, t0, t0, t0
	}
	r.Admitted, r.Started, r.Finished, r.Lease, r.State = t0, t0, t0, subjects.LeaseKey(r.Repo, 2), wire.RunFailed
	data, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a finished run of %d stages: %d bytes", len(r.Stages), len(data))
	if len(data) > subjects.MaxPayload-kvHeaderRoom {
		t.Errorf("finished run of the widest pipeline (%d stages) is %d bytes, over %d", len(r.Stages), len(data), subjects.MaxPayload-kvHeaderRoom)
	}
}

func TestFitsRefusesWhatCannotBeWritten(t *testing.T) {
	p, err := pipeline.Parse("p.yml", []byte("name: x\nstages: [{key: a, commands: [true]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	r := newRun("01JZZZZZZZZZZZZZZZZZZZZZZZ", wire.Trigger{ID: "t", File: "p.yml", Branch: strings.Repeat("b", subjects.MaxPayload)}, p, 1, t0)
	err = (&Dispatcher{}).fits(r)
	if !errors.Is(err, errRunTooLarge) || !strings.Contains(err.Error(), "p.yml: the run document would need 1026 KiB (1 stages") || !strings.Contains(err.Error(), "over the limit of 1024 KiB") {
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
