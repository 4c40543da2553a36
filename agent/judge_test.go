package agent

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/wire"
)

// runWith returns the document of stage "s" as given, of a run being
// cancelled when cancelReason is set.
func runWith(s wire.StageRun, cancelReason string) *wire.StageRun {
	s.Key = "s"
	s.Cancelling = cancelReason != ""
	return &s
}

// jobOf returns the job message of stage "s" with its job and attempt
// numbers.
func jobOf(job, attempt int) wire.Job {
	return wire.Job{RunID: "run", Job: job, Attempt: attempt, Stage: pipeline.Stage{Key: "s"}}
}

func (d decision) String() string {
	names := map[verdict]string{runIt: "run", drop: "drop", later: "later", refuse: "refuse"}
	return fmt.Sprintf("%s(attempt %d, delay %s)", names[d.verdict], d.attempt, d.delay)
}

func TestJudge(t *testing.T) {
	const seq = 40
	tests := []struct {
		name      string
		doc       *wire.StageRun
		read      docRead
		job       wire.Job
		delivered int
		msgSeq    uint64
		want      decision
	}{
		{"run not found", nil, docMissing, jobOf(1, 1), 1, seq, decision{verdict: drop}},
		{"run unreadable", nil, docUnreadable, jobOf(1, 1), 1, seq, decision{verdict: later, delay: unreadableDelay}},
		{"stage missing", nil, docFound, jobOf(1, 1), 1, seq, decision{verdict: drop}},
		{"stage on a later job", runWith(wire.StageRun{State: wire.StageQueued, Job: 2, Attempt: 2}, ""), docFound, jobOf(1, 1), 2, seq, decision{verdict: drop}},
		{"document older than the job", runWith(wire.StageRun{State: wire.StageFailed, Job: 1, Attempt: 1}, ""), docFound, jobOf(2, 2), 1, seq, decision{verdict: later, delay: lagDelay}},
		{"stage still pending in the document", runWith(wire.StageRun{State: wire.StagePending}, ""), docFound, jobOf(1, 1), 1, seq, decision{verdict: later, delay: lagDelay}},
		{"stage ended", runWith(wire.StageRun{State: wire.StageSucceeded, Job: 1, Attempt: 1, JobSeq: seq}, ""), docFound, jobOf(1, 1), 1, seq, decision{verdict: drop}},
		{"stage ended, redelivered", runWith(wire.StageRun{State: wire.StageFailed, Job: 1, Attempt: 2}, ""), docFound, jobOf(1, 1), 3, seq, decision{verdict: drop}},
		{"copy republished after the dedup window", runWith(wire.StageRun{State: wire.StageQueued, Job: 1, Attempt: 1, JobSeq: seq}, ""), docFound, jobOf(1, 1), 1, seq + 5, decision{verdict: drop}},
		{"queued", runWith(wire.StageRun{State: wire.StageQueued, Job: 1, Attempt: 1, JobSeq: seq}, ""), docFound, jobOf(1, 1), 1, seq, decision{verdict: runIt, attempt: 1}},
		{"queued, job sequence not recorded yet", runWith(wire.StageRun{State: wire.StageQueued, Job: 1, Attempt: 1}, ""), docFound, jobOf(1, 1), 1, seq, decision{verdict: runIt, attempt: 1}},
		{"queued retry", runWith(wire.StageRun{State: wire.StageQueued, Job: 3, Attempt: 3, JobSeq: seq}, ""), docFound, jobOf(3, 3), 1, seq, decision{verdict: runIt, attempt: 3}},
		{"queued, handed back before it started", runWith(wire.StageRun{State: wire.StageQueued, Job: 2, Attempt: 2, JobSeq: seq}, ""), docFound, jobOf(2, 2), 2, seq, decision{verdict: runIt, attempt: 2}},
		{"queued after a later attempt, redelivered", runWith(wire.StageRun{State: wire.StageQueued, Job: 1, Attempt: 2, JobSeq: seq}, ""), docFound, jobOf(1, 1), 3, seq, decision{verdict: runIt, attempt: 3}},
		{"queued after a later attempt, first delivery", runWith(wire.StageRun{State: wire.StageQueued, Job: 1, Attempt: 2}, ""), docFound, jobOf(1, 1), 1, seq, decision{verdict: drop}},
		{"running, a copy", runWith(wire.StageRun{State: wire.StageRunning, Job: 1, Attempt: 1, Agent: "a"}, ""), docFound, jobOf(1, 1), 1, seq, decision{verdict: drop}},
		{"running, redelivered: take over", runWith(wire.StageRun{State: wire.StageRunning, Job: 1, Attempt: 1, Agent: "a", JobSeq: seq}, ""), docFound, jobOf(1, 1), 2, seq, decision{verdict: runIt, attempt: 2}},
		{"running a takeover, redelivered again", runWith(wire.StageRun{State: wire.StageRunning, Job: 2, Attempt: 4, Agent: "b", JobSeq: seq}, ""), docFound, jobOf(2, 2), 3, seq, decision{verdict: runIt, attempt: 5}},
		{"running, copy redelivered", runWith(wire.StageRun{State: wire.StageRunning, Job: 1, Attempt: 1, JobSeq: seq}, ""), docFound, jobOf(1, 1), 2, seq + 1, decision{verdict: drop}},
		{"cancelling, stage cancelled while queued", runWith(wire.StageRun{State: wire.StageCancelled, Job: 1, Attempt: 1}, "user"), docFound, jobOf(1, 1), 1, seq, decision{verdict: drop}},
		{"cancelling, running stage redelivered", runWith(wire.StageRun{State: wire.StageRunning, Job: 1, Attempt: 1, Agent: "a"}, "user"), docFound, jobOf(1, 1), 2, seq, decision{verdict: refuse, attempt: 2}},
		{"cancelling, running stage's copy", runWith(wire.StageRun{State: wire.StageRunning, Job: 1, Attempt: 1, Agent: "a"}, "user"), docFound, jobOf(1, 1), 1, seq, decision{verdict: drop}},
		{"cancelling, queued", runWith(wire.StageRun{State: wire.StageQueued, Job: 1, Attempt: 1}, "user"), docFound, jobOf(1, 1), 1, seq, decision{verdict: refuse, attempt: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := judge(tt.doc, tt.read, tt.job, tt.delivered, tt.msgSeq)
			got.why = ""
			if got != tt.want {
				t.Errorf("judge(%s) = %v, want %v", tt.name, got, tt.want)
			}
		})
	}
}

func TestStandingOf(t *testing.T) {
	const me = "me"
	tests := []struct {
		name    string
		doc     *wire.StageRun
		read    docRead
		job     wire.Job
		attempt int
		want    standing
	}{
		{"unreadable", nil, docUnreadable, jobOf(1, 1), 1, holding},
		{"missing", nil, docMissing, jobOf(1, 1), 1, holding},
		{"queued, started event not applied yet", runWith(wire.StageRun{State: wire.StageQueued, Job: 1, Attempt: 1}, ""), docFound, jobOf(1, 1), 1, holding},
		{"running here", runWith(wire.StageRun{State: wire.StageRunning, Job: 1, Attempt: 1, Agent: me}, ""), docFound, jobOf(1, 1), 1, holding},
		{"takeover, started event not applied yet", runWith(wire.StageRun{State: wire.StageRunning, Job: 1, Attempt: 1, Agent: "a"}, ""), docFound, jobOf(1, 1), 2, holding},
		{"a later attempt took over", runWith(wire.StageRun{State: wire.StageRunning, Job: 1, Attempt: 2, Agent: "b"}, ""), docFound, jobOf(1, 1), 1, superseded},
		{"a later attempt took over, not started yet", runWith(wire.StageRun{State: wire.StageQueued, Job: 1, Attempt: 2}, ""), docFound, jobOf(1, 1), 1, superseded},
		{"the same attempt started elsewhere", runWith(wire.StageRun{State: wire.StageRunning, Job: 1, Attempt: 1, Agent: "b"}, ""), docFound, jobOf(1, 1), 1, duplicate},
		{"stage moved on to a later job", runWith(wire.StageRun{State: wire.StageQueued, Job: 2, Attempt: 2}, ""), docFound, jobOf(1, 1), 1, movedOn},
		{"stage gone", nil, docFound, jobOf(1, 1), 1, movedOn},
		{"document older than the job", runWith(wire.StageRun{State: wire.StageFailed, Job: 1, Attempt: 1}, ""), docFound, jobOf(2, 2), 2, holding},
		{"ended by this attempt's finish", runWith(wire.StageRun{State: wire.StageSucceeded, Job: 1, Attempt: 1, Agent: me}, ""), docFound, jobOf(1, 1), 1, holding},
		{"run cancelling", runWith(wire.StageRun{State: wire.StageRunning, Job: 1, Attempt: 1, Agent: me}, "user"), docFound, jobOf(1, 1), 1, cancelling},
		{"run cancelling, stage cancelled while queued", runWith(wire.StageRun{State: wire.StageCancelled, Job: 1, Attempt: 1}, ""), docFound, jobOf(1, 1), 1, cancelling},
		{"run cancelling, superseded", runWith(wire.StageRun{State: wire.StageRunning, Job: 1, Attempt: 2, Agent: "b"}, "user"), docFound, jobOf(1, 1), 1, superseded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := standingOf(tt.doc, tt.read, tt.job, tt.attempt, me); got != tt.want {
				t.Errorf("standingOf(%s) = %d, want %d", tt.name, got, tt.want)
			}
		})
	}
}

func TestConclude(t *testing.T) {
	ok := result{exitCode: 0}
	failed := result{exitCode: 1, category: wire.CategoryCommand, message: "exit status 1"}
	infra := result{exitCode: -1, category: wire.CategoryInfra, message: "pull failed"}
	oom := result{exitCode: 137, category: wire.CategoryOOM, message: "oom"}
	tests := []struct {
		name       string
		res        result
		cause      error
		stopping   bool
		delivered  int
		maxDeliver int
		want       conclusion
	}{
		{"success", ok, nil, false, 1, 5, conclusion{ending: report, res: ok}},
		{"command failure", failed, nil, false, 1, 5, conclusion{ending: report, res: failed}},
		{"infra failure, deliveries left", infra, nil, false, 2, 5, conclusion{ending: retry, res: infra, delay: 2 * time.Second}},
		{"infra failure, no limit", infra, nil, false, 9, 0, conclusion{ending: retry, res: infra, delay: infraBackoff(9)}},
		{"infra failure, last delivery", infra, nil, false, 5, 5, conclusion{ending: report, res: infra}},
		{"timeout", failed, errTimeout, false, 1, 5, conclusion{ending: report, res: result{exitCode: 1, category: wire.CategoryTimeout, message: "timed out after 1m0s"}}},
		{"cancelled during the pull", infra, errRunCancelled, false, 1, 5, conclusion{ending: report, res: result{exitCode: -1, category: wire.CategoryCancelled, message: "run cancelled"}}},
		{"superseded", failed, errSuperseded, false, 1, 5, conclusion{ending: silent}},
		{"superseded while stopping", failed, errSuperseded, true, 1, 5, conclusion{ending: silent}},
		{"lost touch with the server", failed, errLost, false, 1, 5, conclusion{ending: silent}},
		{"a copy another agent won", failed, errDuplicate, false, 1, 5, conclusion{ending: discard}},
		{"agent stopping", failed, context.Canceled, true, 1, 5, conclusion{ending: handBack}},
		{"agent stopping during the pull", infra, context.Canceled, true, 1, 5, conclusion{ending: handBack}},
		{"agent stopping after a success", ok, context.Canceled, true, 1, 5, conclusion{ending: report, res: ok}},
		{"agent stopping, run cancelled", failed, errRunCancelled, true, 1, 5, conclusion{ending: report, res: result{exitCode: 1, category: wire.CategoryCancelled, message: "run cancelled"}}},
		{"out of memory", oom, nil, false, 1, 5, conclusion{ending: report, res: oom}},
		{"out of memory at the timeout", oom, errTimeout, false, 1, 5, conclusion{ending: report, res: oom}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := conclude(tt.res, tt.cause, tt.stopping, tt.delivered, tt.maxDeliver, time.Minute)
			if got != tt.want {
				t.Errorf("conclude(%s) = %+v, want %+v", tt.name, got, tt.want)
			}
		})
	}
}

func TestSweepable(t *testing.T) {
	tests := []struct {
		name   string
		active bool
		end    runEnd
		want   bool
	}{
		{"ended", false, runEnded, true},
		{"gone", false, runGone, true},
		{"live", false, runLive, false},
		{"unreadable", false, runUnknown, false},
		{"ended, a job still runs here", true, runEnded, false},
		{"gone, a job still runs here", true, runGone, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sweepable(tt.active, tt.end); got != tt.want {
				t.Errorf("sweepable(%s) = %v, want %v", tt.name, got, tt.want)
			}
		})
	}
}

func TestFinishOf(t *testing.T) {
	tests := []struct {
		name string
		ev   wire.Event
		want bool
	}{
		{"a finish of the job at the attempt", wire.Event{Type: wire.Finished, Job: 2, Attempt: 3}, true},
		{"a finish of a takeover attempt", wire.Event{Type: wire.Finished, Job: 2, Attempt: 4}, true},
		{"a finish of an earlier attempt", wire.Event{Type: wire.Finished, Job: 2, Attempt: 2}, false},
		{"a finish of another job", wire.Event{Type: wire.Finished, Job: 1, Attempt: 3}, false},
		{"an untagged finish", wire.Event{Type: wire.Finished, Attempt: 3}, false},
		{"a heartbeat", wire.Event{Type: wire.Heartbeat, Job: 2, Attempt: 3}, false},
	}
	for _, tt := range tests {
		if got := finishOf(tt.ev, 2, 3); got != tt.want {
			t.Errorf("%s: finishOf = %v, want %v", tt.name, got, tt.want)
		}
	}
}
