package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// aliasedPipeline returns a pipeline of n stages that all run one list of
// cmds commands, written once and aliased: a small file whose expanded
// form is large.
func aliasedPipeline(n, cmds int, each string) string {
	var b strings.Builder
	b.WriteString("name: big\nstages:\n  - key: s0\n    commands: &cmds\n")
	for i := range cmds {
		fmt.Fprintf(&b, "      - echo step %d %s\n", i, each)
	}
	for i := 1; i < n; i++ {
		fmt.Fprintf(&b, "  - key: s%d\n    commands: *cmds\n", i)
	}
	return b.String()
}

// oversized is a pipeline one stage over the documented limit
// (pipeline.MaxStages): a 300 KB file.
var oversized = aliasedPipeline(pipeline.MaxStages+1, 1, "")

// sizeLimitError is how every refusal of oversized names the limit.
const sizeLimitError = "10001 stages, over the limit of 10000 stages per pipeline"

// outcome returns the outcome recorded for trigger id, or nil.
func outcome(t testing.TB, js jetstream.JetStream, id string) *wire.Outcome {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), subjects.DedupBucket)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), subjects.DedupKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("outcome of %s: %v", id, err)
	}
	var out wire.Outcome
	if err := json.Unmarshal(e.Value(), &out); err != nil {
		t.Fatalf("outcome of %s: %v", id, err)
	}
	return &out
}

// runKeys returns the run ids in the runs bucket.
func runKeys(t testing.TB, js jetstream.JetStream) []string {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), subjects.RunsBucket)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := bus.Keys(context.Background(), kv, ">")
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// triggersSettled waits until every trigger published so far was acked
// (the triggers stream is a work queue) and returns the dispatchers'
// consumer info.
func triggersSettled(t testing.TB, js jetstream.JetStream) *jetstream.ConsumerInfo {
	t.Helper()
	ctx := context.Background()
	var info *jetstream.ConsumerInfo
	if !Eventually(30*time.Second, func() bool {
		st, err := js.Stream(ctx, subjects.TriggersStream)
		if err != nil {
			return false
		}
		c, err := js.Consumer(ctx, subjects.TriggersStream, subjects.DispatcherTriggers)
		if err != nil {
			return false
		}
		info, err = c.Info(ctx)
		return err == nil && st.CachedInfo().State.Msgs == 0 && info.NumAckPending == 0
	}) {
		t.Fatalf("triggers still pending: %+v", info)
	}
	return info
}

// publishTrigger publishes tr on its subject with Nats-Msg-Id msgID, as a
// webhook bridge or a second client would, bypassing the CLI's checks.
func publishTrigger(t testing.TB, js jetstream.JetStream, tr wire.Trigger, msgID string) *jetstream.PubAck {
	t.Helper()
	if tr.Time.IsZero() {
		tr.Time = time.Now()
	}
	data, err := json.Marshal(tr)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish(context.Background(), subjects.Trigger(tr.Repo), data, jetstream.WithMsgID(msgID))
	if err != nil {
		t.Fatalf("publish trigger %s: %v", tr.ID, err)
	}
	return ack
}

// deadTriggers returns the dead triggers of repo in the DLQ.
func deadTriggers(t testing.TB, js jetstream.JetStream, repo string) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := context.Background()
	st, err := js.Stream(ctx, subjects.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []*jetstream.RawStreamMsg
	info := st.CachedInfo()
	for seq := info.State.FirstSeq; seq != 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err == nil && m.Subject == subjects.TriggerDLQ(subjects.Trigger(repo)) {
			msgs = append(msgs, m)
		}
	}
	return msgs
}

// Defect 3: a pipeline whose run document cannot fit in a NATS message is
// refused at once, by every command, with the limit named.
func TestOversizedPipelineIsRefusedByTheCommands(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "pipeline.yml")
	if err := os.WriteFile(file, []byte(oversized), 0o600); err != nil {
		t.Fatal(err)
	}
	want := file + ":2:1: stages: " + sizeLimitError
	tests := []struct {
		name string
		args []string
	}{
		{"validate", []string{"validate", file}},
		{"run", []string{"run", file}},
		// The limit is checked before the server is looked for.
		{"trigger", []string{"trigger", "--server", "nats://127.0.0.1:1", file}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Before the fix, weft run retried "maximum payload exceeded"
			// until killed: wait with a deadline, not RunWeft's 2 minutes.
			p := startWeft(t, nil, tt.args...)
			code := p.wait(t, 30*time.Second)
			stderr := strings.Join(p.stderr.all(), "\n")
			if code != 2 || !strings.Contains(stderr, want) {
				t.Errorf("weft %s exited %d with stderr %q, want 2 and %q", tt.name, code, stderr, want)
			}
		})
	}
	// The same limit lets the largest pipeline through.
	fits := filepath.Join(dir, "fits.yml")
	if err := os.WriteFile(fits, []byte(aliasedPipeline(pipeline.MaxStages, 1, "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := RunWeft(t, weftBin, dir, nil, "validate", fits); res.Code != 0 {
		t.Errorf("weft validate of 10,000 one-command stages exited %d: %s", res.Code, res.Stderr)
	}
}

// Defect 3, the dispatcher's side: a trigger that bypasses the CLI's check
// is refused before anything is written, handled once, never retried.
func TestDispatcherRefusesARunThatCannotFit(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true})
	js := s.Bus.JS

	t.Run("pipeline over the limit, published directly", func(t *testing.T) {
		tr := wire.Trigger{ID: "oversized-1", Repo: "acme/api", File: "pipeline.yml", Pipeline: oversized}
		publishTrigger(t, js, tr, tr.ID)
		var out *wire.Outcome
		if !Eventually(30*time.Second, func() bool { out = outcome(t, js, tr.ID); return out != nil }) {
			t.Fatal("no outcome recorded for the oversized trigger")
		}
		if out.RunID != "" || out.Reason != wire.RefusedInvalid || !strings.Contains(out.Error, "pipeline.yml:2:1: stages: "+sizeLimitError) {
			t.Fatalf("outcome = %+v, want a refusal, reason invalid, naming the limit", out)
		}
	})

	// The pipeline is within its limits, but the branch the trigger names
	// makes a stage's job (its commands and environment, and the branch)
	// too large for a message.
	t.Run("a job over a message, submitted", func(t *testing.T) {
		half := 32_000
		text := "name: big\nstages:\n  - key: s\n    commands: [&c " + strings.Repeat("x", half) + ", *c]\n    env: {A: &v " + strings.Repeat("v", half) + ", B: *v}\n"
		if _, err := pipeline.Parse("p.yml", []byte(text)); err != nil {
			t.Fatalf("the pipeline must be within the limits: %v", err)
		}
		tr := wire.Trigger{ID: "oversized-2", Repo: "acme/api", File: "p.yml", Pipeline: text, Branch: strings.Repeat("b", 950_000)}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := client.Submit(ctx, js, tr)
		var re *client.RefusedError
		if !errors.As(err, &re) || re.Reason != wire.RefusedInvalid || !strings.Contains(re.Message, "p.yml: the job of stage s would need") || !strings.Contains(re.Message, "over the limit of 1024 KiB") {
			t.Fatalf("Submit = %v, want a refusal, reason invalid, naming the message limit", err)
		}
	})

	info := triggersSettled(t, js)
	if info.Delivered.Consumer != 2 || info.NumRedelivered != 0 {
		t.Errorf("triggers delivered %d times, %d redelivered; want each delivered once", info.Delivered.Consumer, info.NumRedelivered)
	}
	if keys := runKeys(t, js); len(keys) != 0 {
		t.Errorf("runs bucket holds %v, want no run", keys)
	}
}

// Defect 3: a trigger that keeps failing is given up after its last
// delivery: Submit returns a refusal with the last error and the trigger
// is kept in the DLQ, on a subject of its own.
func TestATriggerThatKeepsFailingIsDeadLettered(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true})
	js := s.Bus.JS
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A full runs bucket: every run document write fails, a failure that
	// could pass (an operator may raise the limit).
	runs, err := js.KeyValue(ctx, subjects.RunsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runs.Put(ctx, "placeholder", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_"+subjects.RunsBucket)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.MaxMsgs, cfg.Discard = 1, jetstream.DiscardNew
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}

	tr := wire.Trigger{ID: "doomed-1", Repo: "acme/api", File: "p.yml", Pipeline: "name: d\nstages:\n  - key: a\n    commands: [true]\n"}
	_, err = client.Submit(ctx, js, tr)
	var re *client.RefusedError
	if !errors.As(err, &re) || re.Reason != wire.RefusedDeadLetter || !strings.Contains(re.Message, "after 5 deliveries") || !strings.Contains(re.Message, "maximum messages") {
		t.Fatalf("Submit = %v, want a dead_letter refusal after 5 deliveries naming the last error", err)
	}

	info := triggersSettled(t, js)
	if info.Delivered.Consumer != subjects.TriggerMaxDeliver {
		t.Errorf("trigger delivered %d times, want %d", info.Delivered.Consumer, subjects.TriggerMaxDeliver)
	}
	dead := deadTriggers(t, js, tr.Repo)
	if len(dead) != 1 {
		t.Fatalf("DLQ holds %d dead triggers of %s, want 1", len(dead), tr.Repo)
	}
	var copied wire.Trigger
	h := dead[0].Header
	if err := json.Unmarshal(dead[0].Data, &copied); err != nil || copied.ID != tr.ID || copied.Pipeline != tr.Pipeline ||
		h.Get(subjects.HeaderTrigger) != tr.ID || h.Get(subjects.HeaderDeliveries) != "5" ||
		h.Get(subjects.HeaderSubject) != subjects.Trigger(tr.Repo) || !strings.Contains(h.Get(subjects.HeaderError), "maximum messages") {
		t.Errorf("dead trigger = %s %q, want the trigger with its id, 5 deliveries, its subject and the error", h, dead[0].Data)
	}
	if keys := runKeys(t, js); len(keys) != 1 {
		t.Errorf("runs bucket holds %v, want only the placeholder", keys)
	}
	// The job dead letters' subjects (weft.dlq.<queue>) do not match it.
	if filterMatches(subjects.AllJobDLQ, dead[0].Subject) {
		t.Errorf("%s matches %s", dead[0].Subject, subjects.AllJobDLQ)
	}
}

// filterMatches reports whether subject matches the subject filter.
func filterMatches(filter, subject string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subject, ".")
	for i, tok := range f {
		switch {
		case tok == ">":
			return len(s) > i
		case i >= len(s):
			return false
		case tok != "*" && tok != s[i]:
			return false
		}
	}
	return len(f) == len(s)
}

// A message on a trigger subject that is not a trigger is dead-lettered on
// its first delivery, with the reason; one whose id can be read is
// answered.
func TestMalformedTriggersAreDeadLetteredAtOnce(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true})
	js := s.Bus.JS
	ctx := context.Background()
	repo := "acme/malformed"
	for i, data := range []string{"not json", `{"id": "m-1", "time": "yesterday"}`} {
		if _, err := js.Publish(ctx, subjects.Trigger(repo), []byte(data), jetstream.WithMsgID(fmt.Sprint("malformed-", i))); err != nil {
			t.Fatal(err)
		}
	}
	var dead []*jetstream.RawStreamMsg
	if !Eventually(30*time.Second, func() bool { dead = deadTriggers(t, js, repo); return len(dead) == 2 }) {
		t.Fatalf("DLQ holds %d dead triggers, want 2", len(dead))
	}
	for _, m := range dead {
		if m.Header.Get(subjects.HeaderDeliveries) != "1" || !strings.Contains(m.Header.Get(subjects.HeaderError), "malformed trigger") {
			t.Errorf("dead trigger %q has headers %v, want 1 delivery and a malformed-trigger error", m.Data, m.Header)
		}
	}
	if got := dead[1].Header.Get(subjects.HeaderTrigger); got != "m-1" {
		t.Errorf("dead trigger's id = %q, want m-1", got)
	}
	if out := outcome(t, js, "m-1"); out == nil || out.Reason != wire.RefusedInvalid || !strings.Contains(out.Error, "malformed trigger") {
		t.Errorf("outcome of m-1 = %+v, want an invalid refusal", out)
	}
	if info := triggersSettled(t, js); info.Delivered.Consumer != 2 {
		t.Errorf("triggers delivered %d times, want once each", info.Delivered.Consumer)
	}
}

// Defect 15: a pipeline fixed after a refusal runs at once for the same
// repository, branch and commit: the derived trigger id covers the file's
// content.
func TestAFixedPipelineRunsAtOnce(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	at := wire.Trigger{Repo: "acme/api", File: "ci.yml", Branch: "main", Commit: "0123456789abcdef"}
	broken, fixed := at, at
	broken.Pipeline = "name: fix\nstages:\n  - key: a\n    comands: [true]\n"
	fixed.Pipeline = "name: fix\nstages:\n  - key: a\n    commands: [true]\n"
	_, err := client.Submit(ctx, s.Bus.JS, broken)
	var re *client.RefusedError
	if !errors.As(err, &re) || re.Reason != wire.RefusedInvalid || !strings.Contains(re.Message, `did you mean "commands"`) {
		t.Fatalf("Submit(broken) = %v, want an invalid refusal", err)
	}
	id, err := client.Submit(ctx, s.Bus.JS, fixed)
	if err != nil {
		t.Fatalf("Submit(fixed) = %v, want a run", err)
	}
	if r, _ := s.Wait(t, id); r.State != wire.RunSucceeded {
		t.Errorf("run state = %s, want succeeded", r.State)
	}
	if client.TriggerID(broken) == client.TriggerID(fixed) {
		t.Errorf("TriggerID is the same for two contents")
	}
	if client.TriggerID(fixed) != client.TriggerID(fixed) {
		t.Errorf("TriggerID is not stable")
	}
}

// Defect 15: a refusal is remembered only for the triggers stream's
// duplicate window, so a delivery id refused as invalid can be sent again
// with a fixed file within seconds, not after the 60 s dedup window.
func TestARefusalIsRememberedBriefly(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{})
	tr := wire.Trigger{ID: "delivery-7", Repo: "acme/api", File: "ci.yml"}
	tr.Pipeline = "name: fix\nstages:\n  - key: a\n    comands: [true]\n"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	_, err := client.Submit(ctx, s.Bus.JS, tr)
	cancel()
	if !errors.Is(err, client.ErrRefused) {
		t.Fatalf("Submit(broken) = %v, want a refusal", err)
	}
	tr.Pipeline = "name: fix\nstages:\n  - key: a\n    commands: [true]\n"
	// Resubmit every 200ms, each attempt with its own deadline: within the
	// window the refusal answers, after it the trigger is decided again.
	var id string
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for id == "" && time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		id, err = client.Submit(ctx, s.Bus.JS, tr)
		cancel()
		if err != nil && !errors.Is(err, client.ErrRefused) {
			t.Fatalf("Submit(fixed) = %v, want a run or the refusal", err)
		}
		<-tick.C
	}
	if id == "" {
		t.Fatalf("the fixed trigger was still refused after 30s: %v", err)
	}
	if r, _ := s.Wait(t, id); r.State != wire.RunSucceeded {
		t.Errorf("run state = %s, want succeeded", r.State)
	}
}

// Invariant 5 on the dispatcher's side: a trigger delivered again outside
// the triggers stream's 5 s Nats-Msg-Id window (a redelivered webhook, a
// second bridge) is stored and handled again, and still gets the first
// run's id from the dedup bucket, with one run created. It replaces
// TestDuplicateTriggerReturnsTheFirstRun, whose second Submit stayed inside
// the window.
func TestDuplicateTriggerAfterTheStreamWindowReturnsTheFirstRun(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{})
	js := s.Bus.JS
	text := "name: d\nstages:\n  - key: a\n    commands: [true]\n"
	same := func(tr *wire.Trigger) { tr.ID = "delivery-42" }
	start := time.Now()
	first := s.Submit(t, text, same)

	t.Run("another message id, the same trigger id", func(t *testing.T) {
		ack := publishTrigger(t, js, wire.Trigger{ID: "delivery-42", File: "pipeline.yml", Pipeline: text}, "bridge-2:delivery-42")
		if ack.Duplicate {
			t.Fatal("the stream dropped the second message: the dispatcher's dedup is not exercised")
		}
		info := triggersSettled(t, js)
		if info.AckFloor.Stream < ack.Sequence {
			t.Fatalf("second trigger (seq %d) not handled: ack floor %d", ack.Sequence, info.AckFloor.Stream)
		}
	})

	t.Run("the same message id after the window", func(t *testing.T) {
		if !Eventually(2*subjects.TriggerDuplicates, func() bool { return time.Since(start) > subjects.TriggerDuplicates+time.Second }) {
			t.Fatal("clock")
		}
		before := triggersSettled(t, js).Delivered.Stream
		if second := s.Submit(t, text, same); second != first {
			t.Errorf("Submit after the window = %s, want the first run %s", second, first)
		}
		if after := triggersSettled(t, js).Delivered.Stream; after <= before {
			t.Errorf("the trigger was not stored again (last delivered seq %d, was %d): the stream's window is not over", after, before)
		}
	})

	if out := outcome(t, js, "delivery-42"); out == nil || out.RunID != first {
		t.Errorf("outcome = %+v, want the first run %s", out, first)
	}
	if keys := runKeys(t, js); len(keys) != 1 || keys[0] != first {
		t.Errorf("runs = %v, want only %s", keys, first)
	}
	if r, _ := s.Wait(t, first); r.State != wire.RunSucceeded {
		t.Errorf("run state = %s, want succeeded", r.State)
	}
}

// Follow of a run that does not exist returns at once.
func TestFollowAnUnknownRun(t *testing.T) {
	t.Parallel()
	b := Bus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.Follow(ctx, b.JS, "01NOSUCHRUN0000000000000000", func(client.Update) {}); !errors.Is(err, client.ErrNoRun) {
		t.Errorf("Follow(unknown run) = %v, want ErrNoRun", err)
	}
}

// A trigger whose last delivery was taken by a dispatcher that died
// before acking it would stay in the triggers work queue forever, its
// client waiting: the server's max-deliveries advisory (kept in
// WEFT_ADVISORIES) makes the next dispatcher answer it, dead-letter it
// and delete it.
func TestATriggerAbandonedOnItsLastDeliveryIsDeadLettered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := StartStack(t, StackConfig{NoAgent: true, NoDispatcher: true})
	js := s.Bus.JS
	stop := s.StartDispatcher(dispatcher.Config{})
	if !Eventually(10*time.Second, func() bool {
		_, err := js.Consumer(ctx, subjects.AdvisoriesStream, subjects.DispatcherDeadLetters)
		return err == nil
	}) {
		t.Fatal("the dispatcher never created its consumers")
	}
	stop()
	const repo = "acme/abandoned"
	tr := wire.Trigger{ID: "abandoned-1", Repo: repo, File: "p.yml", Pipeline: "name: p\nstages:\n  - key: s\n    commands: [true]\n"}
	publishTrigger(t, js, tr, tr.ID)
	// A dispatcher takes every delivery and dies on each, the last one
	// with the trigger still un-acked.
	c, err := js.Consumer(ctx, subjects.TriggersStream, subjects.DispatcherTriggers)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= subjects.TriggerMaxDeliver; i++ {
		batch, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			if i < subjects.TriggerMaxDeliver {
				if err := m.Nak(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if got != 1 {
			t.Fatalf("delivery %d: got %d messages, want the trigger", i, got)
		}
	}
	if out := outcome(t, js, tr.ID); out != nil {
		t.Fatalf("outcome before any dispatcher finished: %+v", out)
	}
	s.StartDispatcher(dispatcher.Config{})
	var out *wire.Outcome
	if !Eventually(45*time.Second, func() bool { out = outcome(t, js, tr.ID); return out != nil }) {
		t.Fatal("the abandoned trigger was never answered")
	}
	if out.Reason != wire.RefusedDeadLetter || !strings.Contains(out.Error, "no dispatcher finished") {
		t.Errorf("outcome %+v, want a dead_letter refusal saying why", out)
	}
	// The answer comes first; the copy and the delete follow it.
	st, err := js.Stream(ctx, subjects.TriggersStream)
	if err != nil {
		t.Fatal(err)
	}
	left := func() uint64 {
		info, err := st.Info(ctx)
		if err != nil {
			return 1
		}
		return info.State.Msgs
	}
	if !Eventually(10*time.Second, func() bool { return len(deadTriggers(t, js, repo)) == 1 && left() == 0 }) {
		t.Errorf("%d dead copies of the trigger (want 1); %d left in the triggers stream (want none)", len(deadTriggers(t, js, repo)), left())
	}
	if keys := runKeys(t, js); len(keys) != 0 {
		t.Errorf("runs created: %v", keys)
	}
}
