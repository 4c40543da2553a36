package test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// runStates counts the runs of a filter by state.
func runStates(t *testing.T, js jetstream.JetStream, f client.RunFilter) map[wire.RunState]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runs, err := client.SelectRuns(ctx, js, f, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	n := map[wire.RunState]int{}
	for _, r := range runs {
		n[r.State]++
	}
	return n
}

// lastSeq is the last sequence of a stream: what has been published to it.
func lastSeq(t *testing.T, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// requestTimes returns when each request of type typ was stored in the
// events stream after sequence from, in stream order.
func requestTimes(t *testing.T, js jetstream.JetStream, from uint64, typ wire.EventType) []time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var times []time.Time
	err := bus.ReadPending(ctx, js, subjects.EventsStream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from + 1,
	}, func(m jetstream.Msg) error {
		var ev wire.Event
		if json.Unmarshal(m.Data(), &ev) != nil || ev.Type != typ {
			return nil
		}
		meta, err := m.Metadata()
		if err != nil {
			return err
		}
		times = append(times, meta.Timestamp)
		return nil
	})
	if err != nil {
		t.Fatalf("read the events stream: %v", err)
	}
	return times
}

// The outage tools: a thousand runs waiting on a queue nobody serves are
// listed by a dry run, which changes nothing, shed by a bulk cancel, and
// pushed back through by a bulk requeue that goes no faster than its
// rate; every run is waiting again after it.
func TestBulkCancelAndRequeueAThousandWaitingRuns(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	f.dispatcher(t)
	const n, repos = 1000, 20
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	ids := make(chan int, n)
	for i := range n {
		ids <- i
	}
	close(ids)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range 16 {
		wg.Go(func() {
			for i := range ids {
				_, err := client.Submit(ctx, f.s.Bus.JS, wire.Trigger{ID: ulidString(), Repo: fmt.Sprintf("acme/r%02d", i%repos), File: "p.yml",
					Pipeline: fmt.Sprintf("name: w%d\nqueue: nobody\nstages:\n  - key: s\n    commands: [true]\n", i)})
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("submit: %v", err)
	}
	nobody := client.RunFilter{Queue: "nobody"}
	if got := runStates(t, f.s.Bus.JS, nobody); got[wire.RunQueued]+got[wire.RunRunning] != n {
		t.Fatalf("before the bulk cancel: %v, want %d waiting", got, n)
	}
	bulk := func(args ...string) Result {
		t.Helper()
		res := RunWeft(t, weftBin, "", nil, append([]string{"bulk"}, append(args, "--server", f.url)...)...)
		if res.Code != 0 {
			t.Fatalf("weft bulk %s: exit %d\n%s", strings.Join(args, " "), res.Code, res.Stderr)
		}
		return res
	}
	decode := func(res Result) client.BulkResult {
		t.Helper()
		var out client.BulkResult
		if err := json.Unmarshal([]byte(res.Stdout), &out); err != nil {
			t.Fatalf("weft bulk --json printed %q: %v", res.Stdout, err)
		}
		return out
	}

	// A dry run lists them and publishes nothing.
	before := lastSeq(t, f.s.Bus.JS, subjects.EventsStream)
	dry := decode(bulk("cancel", "--queue", "nobody", "--dry-run", "--json"))
	if len(dry.Runs) != n || dry.Done != 0 || !dry.DryRun {
		t.Fatalf("dry run: %d runs, %d done, dry %v; want %d, 0, true", len(dry.Runs), dry.Done, dry.DryRun, n)
	}
	if other := decode(bulk("cancel", "--repo", "acme/r03", "--queue", "nobody", "--dry-run", "--json")); len(other.Runs) != n/repos {
		t.Fatalf("dry run of one repository: %d runs, want %d", len(other.Runs), n/repos)
	}
	if after := lastSeq(t, f.s.Bus.JS, subjects.EventsStream); after != before {
		t.Fatalf("a dry run published %d events", after-before)
	}

	cancelled := decode(bulk("cancel", "--queue", "nobody", "--rate", "1000", "--batch", "100", "--json"))
	if cancelled.Done != n {
		t.Fatalf("bulk cancel did %d of %d", cancelled.Done, n)
	}
	if !Eventually(2*time.Minute, func() bool { return runStates(t, f.s.Bus.JS, nobody)[wire.RunCancelled] == n }) {
		t.Fatalf("after the bulk cancel: %v, want %d cancelled", runStates(t, f.s.Bus.JS, nobody), n)
	}

	before = lastSeq(t, f.s.Bus.JS, subjects.EventsStream)
	if dry := decode(bulk("requeue", "--queue", "nobody", "--dry-run", "--json")); len(dry.Runs) != n {
		t.Fatalf("requeue dry run: %d runs, want %d", len(dry.Runs), n)
	}
	if got := runStates(t, f.s.Bus.JS, nobody); got[wire.RunCancelled] != n {
		t.Fatalf("a requeue dry run changed the runs: %v", got)
	}
	const rate, batch = 250.0, 25
	requeued := bulk("requeue", "--queue", "nobody", "--rate", fmt.Sprint(rate), "--batch", fmt.Sprint(batch), "--json")
	if r := decode(requeued); r.Done != n {
		t.Fatalf("bulk requeue did %d of %d", r.Done, n)
	}
	if !strings.Contains(requeued.Stderr, fmt.Sprintf("%d of %d runs", n, n)) {
		t.Errorf("bulk requeue reported no progress on stderr: %q", requeued.Stderr)
	}
	// The k-th request went in the batch that may start at k/batch*batch/rate.
	times := requestTimes(t, f.s.Bus.JS, before, wire.RetryRequested)
	if len(times) != n {
		t.Fatalf("%d retry requests in the events stream, want %d", len(times), n)
	}
	for k, at := range times {
		earliest := time.Duration(float64(k/batch*batch) / rate * float64(time.Second))
		if got := at.Sub(times[0]); got < earliest-20*time.Millisecond {
			t.Fatalf("retry request %d went %v after the first, before %v: faster than %v runs a second", k, got, earliest, rate)
		}
	}
	spread := times[n-1].Sub(times[0])
	t.Logf("requeued %d runs in %v: %.0f runs a second at --rate %v", n, spread, float64(n-1)/spread.Seconds(), rate)
	if got := float64(n-batch) / spread.Seconds(); math.Abs(got-rate)/rate > 0.5 {
		t.Errorf("requeue went at %.0f runs a second, want about %v", got, rate)
	}
	if !Eventually(2*time.Minute, func() bool {
		got := runStates(t, f.s.Bus.JS, nobody)
		return got[wire.RunQueued]+got[wire.RunRunning] == n
	}) {
		t.Fatalf("after the bulk requeue: %v, want all %d waiting again", runStates(t, f.s.Bus.JS, nobody), n)
	}

	// The audit stream has both, with their filter and count; the dry
	// runs changed nothing and are not there.
	res := RunWeft(t, weftBin, "", nil, "audit", "--action", "runs.", "--json", "--server", f.url)
	if res.Code != 0 {
		t.Fatalf("weft audit: exit %d\n%s", res.Code, res.Stderr)
	}
	var entries []wire.AuditEntry
	for _, line := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
		var e wire.AuditEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("weft audit --json printed %q: %v", line, err)
		}
		entries = append(entries, e)
	}
	if len(entries) != 2 || entries[0].Action != "runs.cancel" || entries[1].Action != "runs.requeue" {
		t.Fatalf("audit: %+v, want runs.cancel then runs.requeue", entries)
	}
	for _, e := range entries {
		if e.Count != n || e.Filter["queue"] != "nobody" || e.Actor == "" || e.Via != wire.AuditViaCLI {
			t.Errorf("audit entry %+v: want count %d, filter queue=nobody, an actor, via cli", e, n)
		}
	}

	// What a bulk action does not apply to is refused, naming it.
	res = RunWeft(t, weftBin, "", nil, "bulk", "requeue", "--state", "running", "--server", f.url)
	if res.Code != 2 || !strings.Contains(res.Stderr, "requeue applies to") {
		t.Errorf("bulk requeue --state running: exit %d, %q; want 2 naming the states", res.Code, res.Stderr)
	}
}

// A failed run retried runs its failed stage again and keeps the stage
// that succeeded; a waiting run moved to another tier has its queued job
// queued again there, and runs from it when an agent comes.
func TestRetryAndPriorityOfOneRun(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	f.dispatcher(t)
	f.agent(t, "agent-r", "--queue", "main")
	gate := filepath.Join(t.TempDir(), "fixed")
	r, _ := f.s.Run(t, fmt.Sprintf("name: flaky\nqueue: main\nstages:\n  - key: build\n    commands: [true]\n  - key: test\n    depends_on: [build]\n    commands: ['test -f %s']\n", gate))
	if r.State != wire.RunFailed {
		t.Fatalf("run %s, want failed", r.State)
	}
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res := RunWeft(t, weftBin, "", nil, "retry", r.ID, "--server", f.url, "--json")
	if res.Code != 0 {
		t.Fatalf("weft retry: exit %d\n%s", res.Code, res.Stderr)
	}
	var after wire.Run
	if err := json.Unmarshal([]byte(res.Stdout), &after); err != nil {
		t.Fatal(err)
	}
	if after.State != wire.RunSucceeded || after.Stage("build").Attempt != 1 || after.Stage("test").Attempt != 2 {
		t.Fatalf("retried: run %s, build attempt %d, test attempt %d; want succeeded, 1, 2", after.State, after.Stage("build").Attempt, after.Stage("test").Attempt)
	}
	if res := RunWeft(t, weftBin, "", nil, "retry", r.ID, "--server", f.url); res.Code != 2 || !strings.Contains(res.Stderr, "only a failed or cancelled run") {
		t.Errorf("retry of a succeeded run: exit %d, %q; want 2", res.Code, res.Stderr)
	}

	// A run cancelled while it ran, retried: the agent that was told to
	// stop the run runs its new attempt (the notice's epoch is older).
	g := newGate(t)
	held := f.s.Submit(t, fmt.Sprintf("name: held\nqueue: main\nstages:\n  - key: s\n    commands: ['while [ ! -f %q ]; do sleep 0.02; done']\n", string(g)))
	waitFor(t, f.s, held, "running", func(r *wire.Run) bool { return r.Stage("s").State == wire.StageRunning })
	if res := RunWeft(t, weftBin, "", nil, "cancel", held, "--server", f.url); res.Code != 0 {
		t.Fatalf("weft cancel: exit %d\n%s", res.Code, res.Stderr)
	}
	if res := RunWeft(t, weftBin, "", nil, "retry", held, "--no-wait", "--server", f.url); res.Code != 0 {
		t.Fatalf("weft retry of a cancelled run: exit %d\n%s", res.Code, res.Stderr)
	}
	waitFor(t, f.s, held, "running again", func(r *wire.Run) bool { return r.Stage("s").State == wire.StageRunning && r.Stage("s").Attempt == 2 })
	g.open(t)
	if r, _ := f.s.Wait(t, held); r.State != wire.RunSucceeded || r.CancelReason != "" {
		t.Fatalf("the retried cancelled run: %s (cancel reason %q), want succeeded", r.State, r.CancelReason)
	}

	// A stage queued on a queue with no agent yet, moved to critical.
	id := f.s.Submit(t, "name: later\nqueue: late\nstages:\n  - key: s\n    commands: [true]\n")
	waitFor(t, f.s, id, "queued", func(r *wire.Run) bool { return r.Stage("s").State == wire.StageQueued && r.Stage("s").JobSeq != 0 })
	if res := RunWeft(t, weftBin, "", nil, "priority", id, "urgent", "--server", f.url); res.Code != 2 || !strings.Contains(res.Stderr, "urgent") {
		t.Errorf("priority urgent: exit %d, %q; want 2 naming the tier", res.Code, res.Stderr)
	}
	if res := RunWeft(t, weftBin, "", nil, "priority", id, "critical", "--server", f.url); res.Code != 0 {
		t.Fatalf("weft priority: exit %d\n%s", res.Code, res.Stderr)
	}
	waitFor(t, f.s, id, "moved", func(r *wire.Run) bool { return r.Stage("s").Job == 2 && r.Stage("s").JobSeq != 0 })
	jobs, err := f.s.Bus.JS.Stream(context.Background(), subjects.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := jobs.Info(context.Background(), jetstream.WithSubjectFilter(subjects.Job("late", "*")))
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]uint64{subjects.Job("late", subjects.Critical): 1}; fmt.Sprint(info.State.Subjects) != fmt.Sprint(want) {
		t.Fatalf("jobs on queue late: %v, want %v", info.State.Subjects, want)
	}
	f.agent(t, "agent-late", "--queue", "late")
	done, _ := f.s.Wait(t, id)
	if done.State != wire.RunSucceeded || done.Tier != subjects.Critical || done.Stage("s").Job != 2 {
		t.Fatalf("moved run: %s at %s, job %d; want succeeded at critical, job 2", done.State, done.Tier, done.Stage("s").Job)
	}
	if res := RunWeft(t, weftBin, "", nil, "priority", id, "low", "--server", f.url); res.Code != 2 {
		t.Errorf("priority of an ended run: exit %d; want 2", res.Code)
	}
}
