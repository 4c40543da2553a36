package dispatcher

import (
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// newRun returns the run document of a validated trigger, waiting for
// admission: no stage is queued until admit gives it a WIP slot. The
// trigger's queue, when set, replaces the pipeline's queue.
func newRun(id string, t wire.Trigger, p *pipeline.Pipeline, seq uint64, now time.Time) *wire.Run {
	tier := p.Priority
	if t.Priority != "" {
		tier = t.Priority
	}
	if t.Queue != "" && t.Queue != p.Queue {
		for i := range p.Stages {
			if p.Stages[i].Queue == p.Queue {
				p.Stages[i].Queue = t.Queue
			}
		}
		p.Queue = t.Queue
	}
	// The run's variables win over the pipeline's and each stage's env;
	// they are in the run's spec with the rest of its pipeline.
	if len(t.Variables) > 0 {
		if p.Env == nil {
			p.Env = map[string]string{}
		}
		maps.Copy(p.Env, t.Variables)
		for i := range p.Stages {
			for k := range p.Stages[i].Env {
				if v, ok := t.Variables[k]; ok {
					p.Stages[i].Env[k] = v
				}
			}
		}
	}
	r := &wire.Run{
		ID:           id,
		TriggerID:    t.ID,
		Repo:         t.Repo,
		Branch:       t.Branch,
		Commit:       t.Commit,
		CloneURL:     t.CloneURL,
		Untrusted:    t.Untrusted,
		File:         t.File,
		Pipeline:     p,
		PipelineName: p.Name,
		StageCount:   len(p.Stages),
		Tier:         tier,
		State:        wire.RunQueued,
		Seq:          seq,
		Pending:      &wire.Pending{Reason: wire.PendingAdmission, Since: now},
		Created:      now,
	}
	if p.Concurrency != nil {
		r.Group = p.Concurrency.ExpandGroup(map[string]string{
			"WEFT_BRANCH": t.Branch, "WEFT_COMMIT": t.Commit, "WEFT_PIPELINE": p.Name, "WEFT_REPO": t.Repo,
		})
	}
	r.Stages = make([]wire.StageRun, 0, len(p.Stages))
	for _, st := range p.Stages {
		r.Stages = append(r.Stages, wire.PendingStage(st.Key, st.JobQueue()))
	}
	return r
}

// admitRun gives the run its WIP slot and queues its root stages. It
// returns false when the run cannot take it: already admitted, or ended
// (cancelled while it waited).
func admitRun(r *wire.Run, lease string, now time.Time) bool {
	if r.Lease != "" || r.State.Terminal() {
		return false
	}
	r.Lease, r.Admitted, r.Pending = lease, now, nil
	advance(r, now)
	return true
}

// setPending records why a run waits; it returns false when that is
// already what the document says.
func setPending(r *wire.Run, reason, detail string, now time.Time) bool {
	if r.Lease != "" || r.State.Terminal() {
		return false
	}
	if r.Pending != nil && r.Pending.Reason == reason && r.Pending.Detail == detail {
		return false
	}
	r.Pending = &wire.Pending{Reason: reason, Detail: detail, Since: now}
	return true
}

// outcome says whether the stage at position i of r has ended and, if
// so, whether it lets its dependents run: it succeeded, or failed with
// allow_failure.
func outcome(r *wire.Run, i int) (ended, satisfies bool) {
	switch r.Stages[i].State {
	case wire.StageSucceeded:
		return true, true
	case wire.StageFailed:
		return true, r.Pipeline.Stages[i].AllowFailure
	case wire.StageSkipped, wire.StageCancelled:
		return true, false
	}
	return false, false
}

// blockedAt reports whether a dependency of the stage at position i ended
// without satisfying it: the stage can never run.
func blockedAt(r *wire.Run, i int) bool {
	for _, d := range r.Pipeline.Deps(i) {
		if ended, ok := outcome(r, d); ended && !ok {
			return true
		}
	}
	return false
}

// readyAt reports whether every dependency of the stage at position i
// ended and satisfies it.
func readyAt(r *wire.Run, i int) bool {
	for _, d := range r.Pipeline.Deps(i) {
		if ended, ok := outcome(r, d); !ended || !ok {
			return false
		}
	}
	return true
}

// advance skips the stages that can no longer run, queues the stages whose
// dependencies are satisfied (unless the run is being cancelled) and ends
// the run when every stage is terminal. It derives all of it from the
// stages' states, so it is idempotent; it does nothing to a run that is
// not admitted (no lease) or that ended. It reads every stage but hands
// out (Run.Edit) only those it changes, and allocates nothing else. It
// returns the keys it queued, in file order.
func advance(r *wire.Run, now time.Time) []string {
	if r.State.Terminal() || r.Lease == "" {
		return nil
	}
	// Skip what a dependency blocks, and what that skip blocks in turn.
	var skip []int
	for i := range r.Stages {
		if r.Stages[i].State == wire.StagePending && blockedAt(r, i) {
			skip = append(skip, i)
		}
	}
	for len(skip) > 0 {
		i := skip[len(skip)-1]
		skip = skip[:len(skip)-1]
		if r.Stages[i].State != wire.StagePending || !blockedAt(r, i) {
			continue
		}
		s := r.Edit(i)
		s.State, s.Message, s.Finished = wire.StageSkipped, "a dependency did not succeed", now
		skip = append(skip, r.Pipeline.Dependents(i)...)
	}
	var queued []string
	if r.CancelReason == "" {
		for i := range r.Stages {
			if r.Stages[i].State != wire.StagePending || !readyAt(r, i) {
				continue
			}
			queueAttempt(r.Edit(i), now)
			queued = append(queued, r.Stages[i].Key)
		}
	}
	finish(r, now)
	return queued
}

func queueAttempt(s *wire.StageRun, now time.Time) {
	s.State = wire.StageQueued
	s.Attempt++
	s.Job = s.Attempt
	s.Agent, s.ExitCode, s.Category, s.Message, s.LogSeq, s.JobSeq, s.Cancelling = "", -1, wire.CategoryNone, "", 0, 0, false
	s.ArtifactsSeq, s.ArtifactBytes = 0, 0
	s.Queued, s.Started, s.Finished, s.NotBefore = now, time.Time{}, time.Time{}, time.Time{}
}

// finish sets the run's terminal state once every stage is terminal.
func finish(r *wire.Run, now time.Time) {
	state := wire.RunSucceeded
	requested := r.CancelReason != "" // a cancel someone asked for
	for i, s := range r.Stages {
		if !s.State.Terminal() {
			return
		}
		switch {
		case s.State == wire.StageFailed && !r.Pipeline.Stages[i].AllowFailure:
			state = wire.RunFailed
		case s.State == wire.StageCancelled && s.Cancelling:
			requested = true
		case s.State == wire.StageCancelled && r.CancelReason == "":
			// A stage cancelled outside a run cancel (an agent gave it up)
			// did not do its work: the run did not succeed.
			state = wire.RunFailed
		}
	}
	// A run cancelled is cancelled; one with a stage cancelled on its own
	// is, unless something failed.
	if r.CancelReason != "" || (requested && state == wire.RunSucceeded) {
		state = wire.RunCancelled
	}
	r.State, r.Finished = state, now
}

// maxMessage bounds a message the run document keeps (a stage's failure,
// a cancel reason): the run's size limit (pipeline.MaxSize) counts on
// per-stage state of a few hundred bytes, whatever an agent or a client
// sends.
const maxMessage = 256

// clip returns s cut to maxMessage bytes of valid UTF-8, marked with an
// ellipsis when cut.
func clip(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	return strings.ToValidUTF8(s[:maxMessage-3], "") + "..."
}

// verdict is what applying an event did.
type verdict int

const (
	// ignored: the event changes nothing (stale attempt, duplicate).
	ignored verdict = iota
	// applied: the run document changed.
	applied
	// recancel: an attempt of a cancelled stage is running; tell its
	// agent again.
	recancel
)

// apply applies a stage event to the run. It fences on the attempt: an
// event from an attempt other than the stage's current one changes nothing.
func apply(r *wire.Run, ev wire.Event, now time.Time) verdict {
	s := r.Stage(ev.Stage)
	if s == nil || (ev.Job != 0 && ev.Job != s.Job) {
		// An event of another job of the stage (one the reconcile loop
		// replaced, or a retry's predecessor) changes nothing.
		return ignored
	}
	takeover := ev.Type == wire.Started || (ev.Type == wire.Finished && ev.Job == s.Job)
	if takeover && ev.Attempt > s.Attempt && (s.State == wire.StageQueued || s.State == wire.StageRunning) {
		// The job was redelivered (its agent died or gave it back) and
		// runs as the next attempt: it takes the stage over, and events of
		// the attempt it replaces are fenced off from now on. A takeover
		// may finish without starting (it could not start, or found the
		// run cancelled): its finish, tagged with the stage's job, ends
		// the stage all the same.
		s.Attempt, s.State = ev.Attempt, wire.StageQueued
	}
	if ev.Attempt != s.Attempt {
		return ignored
	}
	if s.State == wire.StageCancelled && ev.Type == wire.Started {
		return recancel
	}
	switch ev.Type {
	case wire.Started:
		if s.State != wire.StageQueued {
			return ignored
		}
		s.State, s.Started, s.Agent = wire.StageRunning, ev.Time, ev.Agent
		if r.State == wire.RunQueued {
			r.State, r.Started = wire.RunRunning, ev.Time
		}
		if r.CancelReason != "" {
			s.Cancelling = true
		}
		return applied
	case wire.Finished:
		if s.State != wire.StageQueued && s.State != wire.StageRunning {
			return ignored
		}
		if s.Started.IsZero() && r.State == wire.RunQueued {
			r.State, r.Started = wire.RunRunning, ev.Time
		}
		s.ExitCode, s.Category, s.Message, s.LogSeq, s.Finished = ev.ExitCode, ev.Category, clip(ev.Message), ev.LogSeq, ev.Time
		if ev.Agent != "" {
			s.Agent = ev.Agent
		}
		switch {
		case ev.Category == wire.CategoryNone && ev.ExitCode == 0:
			s.State = wire.StageSucceeded
			if len(ev.Artifacts) > 0 {
				s.ArtifactsSeq, s.ArtifactBytes = ev.Seq, 0
				for _, a := range ev.Artifacts {
					s.ArtifactBytes += a.Size
				}
			}
		case ev.Category == wire.CategoryCancelled:
			s.State = wire.StageCancelled
		case r.CancelReason == "" && !s.Cancelling && retryable(r.Pipeline.Stage(s.Key), s, ev):
			queueAttempt(s, now)
			s.NotBefore = now.Add(retryDelay(r.ID, s.Key, s.Job))
		default:
			s.State = wire.StageFailed
		}
		return applied
	}
	return ignored
}

// retryable reports whether a failed attempt gets another one:
// retry.automatic retries any failure, or with retry.exit_status only
// commands that exited with one of those codes. Attempts a redelivery took
// over do not count: retries are counted in jobs.
func retryable(st *pipeline.Stage, s *wire.StageRun, ev wire.Event) bool {
	if s.Job > st.Retry.Automatic {
		return false
	}
	if len(st.Retry.ExitStatus) > 0 {
		return ev.Category == wire.CategoryCommand && slices.Contains(st.Retry.ExitStatus, ev.ExitCode)
	}
	return ev.Category != wire.CategoryCancelled
}

// Retry backoff: the delay before retry n is retryBase * 2^(n-1), at most
// retryMax, with +-20 % jitter.
const (
	retryBase = time.Second
	retryMax  = time.Minute
)

// retryDelay returns the backoff before the job-th job of a stage. The
// jitter is derived from the run, stage and job, so a republished job
// carries the same delay.
func retryDelay(runID, stage string, job int) time.Duration {
	d := retryBase << min(job-2, 16)
	d = min(d, retryMax)
	h := fnv.New32a()
	fmt.Fprintf(h, "%s/%s/%d", runID, stage, job)
	jitter := float64(h.Sum32()%4001)/10000 - 0.2 // -0.2 .. +0.2
	return time.Duration(float64(d) * (1 + jitter))
}

// cancel starts cancelling the run: pending and queued stages are cancelled
// now, running ones when their agents report back. It returns false when the
// run is already finished or being cancelled.
func cancel(r *wire.Run, reason string, now time.Time) bool {
	if r.State.Terminal() || r.CancelReason != "" {
		return false
	}
	r.CancelReason = clip(reason)
	for i := range r.Stages {
		switch r.Stages[i].State {
		case wire.StagePending, wire.StageQueued:
			s := r.Edit(i)
			s.State, s.Message, s.Finished = wire.StageCancelled, clip("run cancelled: "+reason), now
		case wire.StageRunning:
			// Every stage not ended is rewritten: a dispatcher holding an
			// older copy of one cannot write it over the cancel.
			r.Edit(i).Cancelling = true
		}
	}
	finish(r, now)
	return true
}

// cancelStage starts cancelling one stage of a run: pending or queued, it
// is cancelled now; running, when its agent reports back. Its dependents
// are skipped; the other stages go on. It returns false when the run has
// ended, or the stage has or is being cancelled already.
func cancelStage(r *wire.Run, key, reason string, now time.Time) bool {
	i := r.Pipeline.Index(key)
	if r.State.Terminal() || i < 0 {
		return false
	}
	s := r.Stages[i]
	if s.State.Terminal() || s.Cancelling {
		return false
	}
	e := r.Edit(i)
	e.Cancelling = true
	if s.State != wire.StageRunning {
		e.State, e.Message, e.Finished = wire.StageCancelled, clip("cancelled: "+reason), now
		advance(r, now)
	}
	return true
}

// queuedJobs returns the job of every queued stage of the run.
func queuedJobs(r *wire.Run, keys []string) []wire.Job {
	jobs := make([]wire.Job, 0, len(keys))
	for _, key := range keys {
		s := r.Stage(key)
		st := r.Pipeline.Stage(key)
		var restore []wire.ArtifactSource
		var stored int64 // what the restored artifacts take
		for _, i := range r.Pipeline.Ancestors(r.Pipeline.Index(key)) {
			if dep := r.Stage(r.Pipeline.Stages[i].Key); dep != nil && dep.ArtifactsSeq != 0 {
				restore = append(restore, wire.ArtifactSource{Stage: dep.Key, Seq: dep.ArtifactsSeq})
				stored += dep.ArtifactBytes
			}
		}
		jobs = append(jobs, wire.Job{
			Restore:       restore,
			ArtifactBytes: stored,
			RunID:         r.ID,
			Pipeline:      r.Pipeline.Name,
			Repo:          r.Repo,
			Attempt:       s.Attempt,
			Job:           s.Job,
			Tier:          r.Tier,
			Epoch:         r.Replays,
			Stage:         *st,
			Env:           wire.JobEnv(r.Pipeline, st, r.ID, r.Branch, r.Commit, s.Attempt),
			NotBefore:     s.NotBefore,
		})
		if r.CloneURL != "" {
			jobs[len(jobs)-1].CloneURL, jobs[len(jobs)-1].Commit = r.CloneURL, r.Commit
		}
	}
	return jobs
}

// queuedKeys returns the keys of the stages in state queued.
func queuedKeys(r *wire.Run) []string {
	var keys []string
	for _, s := range r.Stages {
		if s.State == wire.StageQueued {
			keys = append(keys, s.Key)
		}
	}
	return keys
}

// unpublishedKeys returns the keys of the queued stages whose job message
// is not recorded as stored (JobSeq 0): those a dispatcher that died, or a
// failed publish, may have left unpublished. A stage whose job is stored
// is never published again: a second message of one job, past the
// stream's duplicate window, would be a second copy.
func unpublishedKeys(r *wire.Run) []string {
	var keys []string
	for _, s := range r.Stages {
		if s.State == wire.StageQueued && s.JobSeq == 0 {
			keys = append(keys, s.Key)
		}
	}
	return keys
}

// tierOf returns the run's tier, defaulting to normal.
func tierOf(r *wire.Run) subjects.Tier {
	if r.Tier == "" {
		return subjects.Normal
	}
	return r.Tier
}

// deadLetter fails a stage whose job (attempt job) exhausted its
// deliveries. It returns false when the stage has moved on.
func deadLetter(r *wire.Run, key string, job int, msg string, now time.Time) bool {
	s := r.Stage(key)
	if s == nil || s.Job != job || s.State.Terminal() {
		return false
	}
	s.State, s.Category, s.Message, s.Finished = wire.StageFailed, wire.CategoryDeadLetter, msg, now
	advance(r, now)
	return true
}

// replayStage makes a failed stage run again on an operator's request, as
// a new job, and makes the stages skipped because of it pending again. In
// a live run the stage is queued at once. A run that ended has given up
// its WIP slot and group lock: it goes back to waiting for admission
// (queued with no lease), and its stage is queued when it is admitted. It
// returns false for a stage that did not fail or a cancelled run.
func replayStage(r *wire.Run, key string, now time.Time) bool {
	s := r.Stage(key)
	if s == nil || s.State != wire.StageFailed || r.CancelReason != "" {
		return false
	}
	reopen(r, now, func(st *wire.StageRun) bool { return st.Key == key || st.State == wire.StageSkipped },
		"replayed: waiting for admission again")
	return true
}

// retryRun runs an ended run again from the stages that did not succeed,
// on an operator's request (weft retry, weft bulk requeue): its failed
// and cancelled stages, and the stages they skipped, are pending again,
// the cancel is forgotten, and the run waits for admission again in its
// original arrival order, as a replayed one does. What succeeded is kept.
// It returns false for a run that has not ended or that succeeded.
func retryRun(r *wire.Run, now time.Time) bool {
	if r.State != wire.RunFailed && r.State != wire.RunCancelled {
		return false
	}
	r.CancelReason = ""
	reopen(r, now, func(st *wire.StageRun) bool { return true }, "retried: waiting for admission again")
	return true
}

// reopen makes pending again the stages that did not succeed and again
// selects, and rewrites every stage that did not succeed with a new Epoch,
// so that a dispatcher holding an older copy of one (that skipped it for
// a failure run again now) cannot write it over this. A run that had
// ended goes back to waiting for admission (queued with no lease, pending
// says why); a live one is advanced, queueing what is ready.
func reopen(r *wire.Run, now time.Time, again func(*wire.StageRun) bool, why string) {
	r.Replays++
	for i := range r.Stages {
		if r.Stages[i].State == wire.StageSucceeded {
			continue
		}
		st := r.Edit(i)
		if st.State.Terminal() && again(st) {
			st.State, st.Message, st.Category, st.ExitCode, st.Finished = wire.StagePending, "", wire.CategoryNone, -1, time.Time{}
			st.Cancelling = false
		}
		st.Epoch = r.Replays
	}
	if r.State.Terminal() {
		r.State, r.Finished, r.Lease, r.Admitted = wire.RunQueued, time.Time{}, "", time.Time{}
		r.Pending = &wire.Pending{Reason: wire.PendingAdmission, Detail: why, Since: now}
		return
	}
	advance(r, now)
}

// reprioritize moves a run that has not ended to tier: the stages it
// queues from now on go there, and each stage queued and not yet started
// is queued again there as a new job. It returns the stream sequences of
// the jobs so replaced (to delete: an agent that took one anyway finds
// its stage names another job and drops it) and whether the run changed.
func reprioritize(r *wire.Run, tier subjects.Tier, now time.Time) (replaced []uint64, changed bool) {
	if r.State.Terminal() || r.CancelReason != "" || tierOf(r) == tier {
		return nil, false
	}
	r.Tier = tier
	for i := range r.Stages {
		if r.Stages[i].State != wire.StageQueued {
			continue
		}
		s := r.Edit(i)
		if s.JobSeq != 0 {
			replaced = append(replaced, s.JobSeq)
		}
		queueAttempt(s, now)
		s.Message = clip("moved to tier " + string(tier))
	}
	return replaced, true
}

// lostJob is a job the reconcile loop found gone from the jobs stream:
// the stage, its job number and the job message's sequence as it read
// them. It is acted on only if the stage still names that job.
type lostJob struct {
	Key string
	Job int
	Seq uint64
}

// repairRun applies what the reconcile loop found: finished events the run
// never took (found), and stages whose job is gone (lost), which are
// queued again as a new job, or cancelled in a run being cancelled. A lost
// job the stage no longer names (another pass or dispatcher requeued it
// already) changes nothing. Then it advances the run. It reports whether
// the document changed.
func repairRun(r *wire.Run, found []wire.Event, lost []lostJob, now time.Time) bool {
	changed := false
	for _, ev := range found {
		if apply(r, ev, now) == applied {
			changed = true
		}
	}
	for _, l := range lost {
		s := r.Stage(l.Key)
		if s == nil || s.Job != l.Job || s.JobSeq != l.Seq || (s.State != wire.StageQueued && s.State != wire.StageRunning) {
			continue
		}
		if r.CancelReason != "" {
			s.State, s.Message, s.Finished = wire.StageCancelled, "run cancelled: its job was lost", now
		} else {
			queueAttempt(s, now)
			s.Message = "its job was lost; queued again by the reconcile loop"
		}
		changed = true
	}
	state, queued := r.State, len(queuedKeys(r))
	advance(r, now)
	return changed || r.State != state || len(queuedKeys(r)) != queued
}
