package test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Retention is JetStream's (issue 10): a finished run's document, its
// stages' documents, its events and its logs expire after the retention,
// and its pipeline spec half as long again; nothing sweeps them, and a
// new run of the same pipeline works after its spec expired.
func TestRetentionExpiresRunsEventsAndLogs(t *testing.T) {
	t.Parallel()
	const keep = 2 * time.Second
	s := StartStack(t, StackConfig{Retention: keep})
	ctx := context.Background()
	text := "name: kept\nstages:\n  - key: a\n    commands: [echo some output]\n  - key: b\n    commands: [echo more]\n    depends_on: [a]\n"
	r, _ := s.Run(t, text)
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s, want succeeded", r.State)
	}
	rs, err := runstore.Open(ctx, s.Bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	count := func(stream, subject string) uint64 {
		st, err := s.Bus.JS.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for _, c := range info.State.Subjects {
			n += c
		}
		return n
	}
	events := func() uint64 {
		return count(subjects.EventsStream, subjects.RunEvent(r.ID)+".>") + count(subjects.EventsStream, subjects.RunEvent(r.ID))
	}
	logs := func() uint64 { return count(subjects.LogsStream, subjects.RunLogs(r.ID)) }
	stage := func() bool { st, _, err := rs.Stage(ctx, r.ID, "a"); return err == nil && st != nil }
	header := func() bool { _, _, err := rs.Header(ctx, r.ID); return err == nil }
	if !header() || !stage() || events() == 0 || logs() == 0 {
		t.Fatalf("right after the run: document %t, stage a %t, %d events, %d log batches; want all kept", header(), stage(), events(), logs())
	}
	kv, err := s.Bus.JS.KeyValue(ctx, subjects.RunsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := kv.Status(ctx); err != nil || st.TTL() != keep {
		t.Fatalf("runs bucket TTL = %v (%v), want %s", st.TTL(), err, keep)
	}
	if !Eventually(30*time.Second, func() bool { return !header() && !stage() && events() == 0 && logs() == 0 }) {
		t.Fatalf("after the retention: document %t, stage a %t, %d events, %d log batches; want none", header(), stage(), events(), logs())
	}
	_, err = rs.Spec(ctx, r.Spec)
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatal(err)
	}
	specs, err := s.Bus.JS.ObjectStore(ctx, subjects.PipelinesBucket)
	if err != nil {
		t.Fatal(err)
	}
	if !Eventually(30*time.Second, func() bool {
		_, err := specs.GetInfo(ctx, r.Spec)
		return errors.Is(err, jetstream.ErrObjectNotFound)
	}) {
		t.Errorf("pipeline spec %s still stored after %s", r.Spec, subjects.PipelineRetention(keep))
	}
	again, _ := s.Run(t, text)
	if again.State != wire.RunSucceeded || again.Spec != r.Spec {
		t.Errorf("a new run of the same pipeline: %s with spec %s, want succeeded with spec %s", again.State, again.Spec, r.Spec)
	}
}

// weft server and weft dispatcher say what is kept, and for how long.
func TestRetentionIsDocumentedInTheHelp(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"server", "dispatcher"} {
		res := RunWeft(t, weftBin, t.TempDir(), nil, cmd, "--help")
		for _, want := range []string{"--retention", "Retention: run and stage documents", "30 days (720h)", "WEFT_EVENTS", "WEFT_LOGS", "weft_pipelines"} {
			if res.Code != 0 || !strings.Contains(res.Stdout+res.Stderr, want) {
				t.Errorf("weft %s --help (exit %d) does not say %q", cmd, res.Code, want)
			}
		}
	}
}
