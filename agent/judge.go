package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/wire"
)

// This file holds the agent's decisions, as pure functions of a stage's
// document (or its run's, for a workspace) and what the agent knows of a job: whether to run a delivered
// job and as which attempt (judge), whether a running attempt still holds
// its job (standing), what to do once a stage ended (conclude) and which
// workspaces to remove (sweepable). The code that reads the run document
// and acts on JetStream is in job.go and workspace.go.

// docRead says how reading a run document went.
type docRead int

const (
	// docFound: the document was read.
	docFound docRead = iota
	// docMissing: the stage has no document and its run is gone.
	docMissing
	// docUnreadable: the read failed (timeout, connection, decoding).
	docUnreadable
)

// verdict is what to do with a delivered job.
type verdict int

const (
	// runIt: run the job as decision.attempt.
	runIt verdict = iota
	// drop: terminate the message unrun (Term): it is stale or a copy.
	drop
	// later: hand the message back (NakWithDelay decision.delay): the
	// run document we read is older than the job, or unreadable.
	later
	// refuse: do not run the job, report it finished as cancelled (as
	// decision.attempt) and ack it: its run is being cancelled.
	refuse
)

// Delays before a handed-back job is delivered again.
const (
	// lagDelay: the run document read was older than the job (a replica
	// that lags catches up in milliseconds).
	lagDelay = 250 * time.Millisecond
	// unreadableDelay: the run document could not be read.
	unreadableDelay = time.Second
)

// decision is the judgement of one delivery of a job.
type decision struct {
	verdict verdict
	// attempt is the attempt to run (runIt) or to report (refuse) as.
	attempt int
	// delay is how long to hand the job back for (later).
	delay time.Duration
	// why explains the verdict, for the log.
	why string
}

// judge decides what to do with one delivery of a job: the delivered-th
// delivery of the job message at stream sequence msgSeq, given the
// stage's document as read (s is nil unless read is docFound). Every
// delivery is judged, the first one too: the stage's document, not the
// message, says which job is the stage's current one.
func judge(s *wire.StageRun, read docRead, job wire.Job, delivered int, msgSeq uint64) decision {
	switch read {
	case docMissing:
		// Its run ended or expired (readStage asked its events).
		return decision{verdict: drop, why: "its run is gone"}
	case docUnreadable:
		return decision{verdict: later, delay: unreadableDelay, why: "its stage's document is unreadable"}
	}
	switch {
	case s == nil:
		return decision{verdict: drop, why: "its run has no such stage"}
	case s.Job > job.Job:
		return decision{verdict: drop, why: "its stage moved on to a later job"}
	case s.Job < job.Job || s.State == wire.StagePending:
		// The job exists, so the document we read is older than it.
		return decision{verdict: later, delay: lagDelay, why: "the stage's document read is older than the job"}
	case s.State.Terminal():
		return decision{verdict: drop, why: "its stage has ended"}
	case s.JobSeq != 0 && msgSeq != 0 && s.JobSeq != msgSeq:
		// A copy of the job, republished after the stream's Nats-Msg-Id
		// window.
		return decision{verdict: drop, why: "a copy of the stage's job message"}
	}
	d := decision{verdict: runIt, attempt: job.Attempt}
	switch s.State {
	case wire.StageQueued:
		if s.Attempt > job.Attempt {
			// A later attempt of this job was recorded, so another
			// delivery of it ran: this first delivery is of a copy.
			if delivered == 1 {
				return decision{verdict: drop, why: "a copy of a job that already ran"}
			}
			d.attempt, d.why = s.Attempt+1, "redelivered after a later attempt"
		}
		// No attempt of the job started (the document would say
		// running): an earlier delivery, if any, was handed back or lost
		// before it started, and this one runs as the same attempt.
	case wire.StageRunning:
		if delivered == 1 {
			return decision{verdict: drop, why: "a copy of a job another attempt runs"}
		}
		// Its agent died or was cut off: this is the next attempt.
		d.attempt, d.why = max(s.Attempt, job.Attempt)+1, "taking over a stage whose agent was lost"
	}
	if s.Cancelling {
		return decision{verdict: refuse, attempt: d.attempt, why: "its run is being cancelled"}
	}
	return d
}

// finishOf reports whether ev is a finish of job number job at attempt
// or later: the stored proof that the job ran to its end.
func finishOf(ev wire.Event, job, attempt int) bool {
	return ev.Type == wire.Finished && ev.Job != 0 && ev.Job == job && ev.Attempt >= attempt
}

// standing is what the run document says of an attempt that runs here.
type standing int

const (
	// holding: the attempt still holds its job (or the document cannot
	// tell otherwise).
	holding standing = iota
	// superseded: a later attempt of the same job holds the stage (a
	// takeover of this delivery's message): the job message is theirs.
	superseded
	// duplicate: the same attempt was started by another agent, which
	// won: this delivery is of a copy of the job (republished past the
	// stream's duplicate window), or of the message the winner holds
	// too. Terminating it is safe either way, and leaving it would have
	// its redelivery taken for a takeover of a live attempt.
	duplicate
	// movedOn: the stage moved on to a later job, or is gone: the job
	// message is nobody's.
	movedOn
	// cancelling: the attempt holds its job and its run is being
	// cancelled.
	cancelling
)

// standingOf returns the standing of attempt of job, run by agent, in
// its stage's document s as read. An unreadable or missing document is no
// reason to stop, and neither is one older than the job (a lagging
// replica).
func standingOf(s *wire.StageRun, read docRead, job wire.Job, attempt int, agent string) standing {
	if read != docFound {
		return holding
	}
	switch {
	case s == nil || s.Job > job.Job:
		return movedOn
	case s.Job < job.Job:
		return holding
	case s.Attempt > attempt:
		return superseded
	case s.Attempt == attempt && s.State == wire.StageRunning && s.Agent != "" && s.Agent != agent:
		// Two deliveries ran the same attempt; the first to start won.
		return duplicate
	case s.Cancelling || s.State == wire.StageCancelled:
		// A stage cancelled while queued, whose job an agent took anyway.
		return cancelling
	}
	return holding
}

// Causes of a stage's context ending early; the first one wins.
var (
	errTimeout        = errors.New("agent: stage timed out")
	errRunCancelled   = errors.New("agent: run cancelled")
	errStageCancelled = errors.New("agent: stage cancelled")
	// The causes of an attempt that is no longer this agent's wrap
	// container.ErrNoGrace: its processes are killed at once.
	errSuperseded = fmt.Errorf("agent: another attempt took the stage over: %w", container.ErrNoGrace)
	errDuplicate  = fmt.Errorf("agent: another agent runs the same attempt: %w", container.ErrNoGrace)
	errLost       = fmt.Errorf("agent: no word from the server for most of the AckWait, the job may be redelivered: %w", container.ErrNoGrace)
)

// ending is what to do once an attempt's executor returned.
type ending int

const (
	// report: publish the finished event and ack the job.
	report ending = iota
	// retry: hand the job back with conclusion.delay, for an
	// infrastructure retry.
	retry
	// handBack: hand the job back at once: the agent is stopping.
	handBack
	// silent: report nothing and leave the job alone: it is another
	// attempt's.
	silent
	// discard: report nothing and terminate the delivery: it is a copy
	// another agent won the race for.
	discard
)

// conclusion is how an attempt ends.
type conclusion struct {
	ending ending
	// res is the result to report (report).
	res result
	// delay is the hand-back delay (retry).
	delay time.Duration
}

// conclude decides how an attempt ends from the executor's result, why
// its context ended (cause, nil if it did not), whether the agent is
// stopping, which delivery of the job it was out of how many the
// consumer allows (maxDeliver <= 0: no limit), and the stage's timeout.
func conclude(res result, cause error, stopping bool, delivered, maxDeliver int, timeout time.Duration) conclusion {
	switch {
	case errors.Is(cause, errSuperseded):
		return conclusion{ending: silent}
	case errors.Is(cause, errDuplicate):
		return conclusion{ending: discard}
	case errors.Is(cause, errLost):
		// The job is, or will be, another delivery's: report nothing.
		return conclusion{ending: silent}
	case res.category == wire.CategoryOOM:
		// The kernel's verdict stands, whatever else happened.
	case errors.Is(cause, errTimeout):
		res.category, res.message = wire.CategoryTimeout, "timed out after "+timeout.String()
	case errors.Is(cause, errRunCancelled):
		res.category, res.message = wire.CategoryCancelled, "run cancelled"
	case errors.Is(cause, errStageCancelled):
		res.category, res.message = wire.CategoryCancelled, "stage cancelled"
	case stopping && (res.category != wire.CategoryNone || res.exitCode != 0):
		// The agent's stop ended the stage: another agent runs it. A stage
		// that succeeded all the same is reported.
		return conclusion{ending: handBack}
	case res.category == wire.CategoryInfra && (maxDeliver <= 0 || delivered < maxDeliver):
		return conclusion{ending: retry, res: res, delay: infraBackoff(delivered)}
	}
	return conclusion{ending: report, res: res}
}

// infraBackoff is the delay before delivery n+1 after an infrastructure
// failure on delivery n.
func infraBackoff(n int) time.Duration {
	return min(time.Second<<min(n-1, 6), time.Minute)
}

// runEnd is what the events stream says of a run's end.
type runEnd int

const (
	// runLive: the run has not ended (its last run event is not a finish,
	// or it has none and is younger than the events' retention).
	runLive runEnd = iota
	// runEnded: its last run event is its finish.
	runEnded
	// runGone: it has no run event and is older than the events'
	// retention: whatever it was, it is over.
	runGone
	// runUnknown: the read failed.
	runUnknown
)

// sweepable reports whether a workspace may be removed: no job of its run
// is active here, and its run has ended or is gone. A run whose end
// cannot be read keeps its workspace.
func sweepable(active bool, end runEnd) bool {
	return !active && (end == runEnded || end == runGone)
}
