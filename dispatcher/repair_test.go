package dispatcher

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/weft-ci/weft/wire"
)

// Issue 9, defect 9: a takeover attempt that finishes without a started
// event (it could not start, or found the run cancelled) ends the stage;
// before, its finish was ignored and the stage sat running.
func TestATakeoverThatFinishesWithoutStartingEndsTheStage(t *testing.T) {
	tests := []struct {
		name      string
		ev        wire.Event
		wantState wire.StageState
		want      verdict
	}{
		{"infra failure on its last delivery", wire.Event{Type: wire.Finished, Stage: "build", Attempt: 2, Job: 1, ExitCode: -1, Category: wire.CategoryInfra}, wire.StageFailed, applied},
		{"found the run cancelled", wire.Event{Type: wire.Finished, Stage: "build", Attempt: 2, Job: 1, ExitCode: -1, Category: wire.CategoryCancelled}, wire.StageCancelled, applied},
		{"a finish of another job is fenced off", wire.Event{Type: wire.Finished, Stage: "build", Attempt: 2, Job: 7, ExitCode: 0}, wire.StageRunning, ignored},
		{"an untagged later finish is fenced off", wire.Event{Type: wire.Finished, Stage: "build", Attempt: 2, ExitCode: 0}, wire.StageRunning, ignored},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := startRun(t, diamond)
			if v := apply(r, wire.Event{Type: wire.Started, Stage: "build", Attempt: 1, Job: 1, Agent: "a", Time: at(1)}, at(1)); v != applied {
				t.Fatalf("start = %s", verdictName(v))
			}
			tt.ev.RunID, tt.ev.Time = testRunID, at(40)
			if v := apply(r, tt.ev, at(40)); v != tt.want {
				t.Fatalf("apply(%s) = %s, want %s", describe(tt.ev), verdictName(v), verdictName(tt.want))
			}
			if s := r.Stage("build"); s.State != tt.wantState {
				t.Errorf("stage %s, want %s", s.State, tt.wantState)
			}
		})
	}
}

// Issue 9, defect 10: two reconcile passes that both found a stage's job
// lost requeue it once; before, each pass queued a new job.
func TestRepairRequeuesALostJobOnce(t *testing.T) {
	r := startRun(t, diamond)
	s := r.Stage("build")
	s.JobSeq = 42
	lost := []lostJob{{Key: "build", Job: s.Job, Seq: 42}}
	if !repairRun(r, nil, lost, at(30)) {
		t.Fatal("first pass changed nothing")
	}
	if s := r.Stage("build"); s.State != wire.StageQueued || s.Job != 2 || s.Attempt != 2 {
		t.Fatalf("after the first pass: %+v, want queued as job 2", *s)
	}
	// The second pass built its lost list from the same old document.
	before := cloneRun(r)
	if repairRun(r, nil, lost, at(31)) {
		t.Errorf("second pass changed the run: job %d -> %d", before.Stage("build").Job, r.Stage("build").Job)
	}
}

// A lost job of a run being cancelled is not queued again: the stage is
// cancelled, and the run can end.
func TestRepairCancelsALostJobOfACancellingRun(t *testing.T) {
	r := startRun(t, diamond)
	if v := apply(r, wire.Event{Type: wire.Started, Stage: "build", Attempt: 1, Job: 1, Time: at(1)}, at(1)); v != applied {
		t.Fatal(verdictName(v))
	}
	r.Stage("build").JobSeq = 9
	if !cancel(r, "user", at(2)) {
		t.Fatal("cancel")
	}
	if !repairRun(r, nil, []lostJob{{Key: "build", Job: 1, Seq: 9}}, at(60)) {
		t.Fatal("repair changed nothing")
	}
	if s := r.Stage("build"); s.State != wire.StageCancelled || s.Job != 1 {
		t.Errorf("stage %s job %d, want cancelled, job 1 (no new job)", s.State, s.Job)
	}
	if r.State != wire.RunCancelled {
		t.Errorf("run %s, want cancelled", r.State)
	}
}

// Issue 9, defect 12: replaying a stage of a run that ended sends the run
// back to admission, with no lease; before, it became running with none.
func TestReplayOfAnEndedRunWaitsForAdmission(t *testing.T) {
	r := startRun(t, diamond)
	admitRun(r, "lease.x.0", at(0))
	applyAt(r, wire.Event{Type: wire.Finished, Stage: "build", Attempt: 1, ExitCode: 1, Category: wire.CategoryCommand, Time: at(1)}, at(1))
	if r.State != wire.RunFailed {
		t.Fatalf("run %s, want failed", r.State)
	}
	if !replayStage(r, "build", at(10)) {
		t.Fatal("replay refused")
	}
	if r.State != wire.RunQueued || r.Lease != "" || r.Pending == nil || r.Pending.Reason != wire.PendingAdmission {
		t.Fatalf("after replay: state %s lease %q pending %+v; want queued, no lease, waiting for admission", r.State, r.Lease, r.Pending)
	}
	if s := r.Stage("build"); s.State != wire.StagePending {
		t.Fatalf("replayed stage %s before admission, want pending", s.State)
	}
	if !admitRun(r, "lease.x.1", at(11)) {
		t.Fatal("admit")
	}
	if s := r.Stage("build"); s.State != wire.StageQueued || s.Job != 2 {
		t.Errorf("after admission: build %s job %d, want queued as job 2", s.State, s.Job)
	}
	for _, key := range []string{"lint", "test", "package"} {
		if s := r.Stage(key); s.State != wire.StagePending {
			t.Errorf("%s %s, want pending again", key, s.State)
		}
	}
}

// Replaying a failed stage of a run still in flight queues it at once.
func TestReplayInALiveRunQueuesAtOnce(t *testing.T) {
	r := startRun(t, "name: two\nstages:\n  - key: a\n    commands: [x]\n    allow_failure: false\n  - key: b\n    commands: [sleep 9]\n")
	apply(r, wire.Event{Type: wire.Started, Stage: "b", Attempt: 1, Time: at(1)}, at(1))
	applyAt(r, wire.Event{Type: wire.Finished, Stage: "a", Attempt: 1, ExitCode: 1, Category: wire.CategoryCommand, Time: at(2)}, at(2))
	if r.State.Terminal() {
		t.Fatal("run ended with b running")
	}
	if !replayStage(r, "a", at(3)) {
		t.Fatal("replay refused")
	}
	if s := r.Stage("a"); s.State != wire.StageQueued || r.Lease != "lease._.0" {
		t.Errorf("a %s, lease %q; want queued under the run's lease", s.State, r.Lease)
	}
}

func TestUnpublishedKeys(t *testing.T) {
	r := startRun(t, diamond)
	if got := unpublishedKeys(r); len(got) != 1 || got[0] != "build" {
		t.Fatalf("unpublishedKeys = %v, want [build]", got)
	}
	r.Stage("build").JobSeq = 5
	if got := unpublishedKeys(r); len(got) != 0 {
		t.Errorf("unpublishedKeys with the job stored = %v, want none", got)
	}
}

// A stage's message and a cancel reason are kept short, whatever size an
// agent or a client sends: the run's size limit counts on it.
func TestMessagesAreClipped(t *testing.T) {
	r := startRun(t, diamond)
	long := strings.Repeat("é", 1000)
	applyAt(r, wire.Event{Type: wire.Finished, Stage: "build", Attempt: 1, ExitCode: -1, Category: wire.CategoryInfra, Message: long}, at(1))
	if m := r.Stage("build").Message; len(m) > maxMessage || !utf8.ValidString(m) || !strings.HasSuffix(m, "...") {
		t.Errorf("stage message of %d bytes kept as %d bytes (valid %v)", len(long), len(m), utf8.ValidString(m))
	}
	r = startRun(t, diamond)
	cancel(r, long, at(2))
	if len(r.CancelReason) > maxMessage {
		t.Errorf("cancel reason kept as %d bytes", len(r.CancelReason))
	}
}
