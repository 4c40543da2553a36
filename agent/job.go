package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/gitsrc"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// jobLimits are the settings of the consumer a job came from that shape
// its handling.
type jobLimits struct {
	ackWait    time.Duration // heartbeats go every third of it
	maxDeliver int           // infrastructure failures are retried until it
}

// job is one stage attempt on this agent, from the moment its message was
// taken until it is acked, handed back or left to another attempt.
type job struct {
	wire.Job
	msg       jetstream.Msg
	delivered int       // which delivery of the message this is
	taken     time.Time // when this agent took this delivery
	limits    jobLimits // of the consumer the message came from
	log       zerolog.Logger
	cancel    context.CancelCauseFunc
	started   atomic.Bool // set once the stage's process or container runs
	// startedAck is the pending store of the started event, published
	// without waiting (the stage runs meanwhile); report waits for it
	// before the finish. Set by the executor's start callback.
	startedAck atomic.Pointer[jetstream.PubAckFuture]
	// lost is set when the server confirmed nothing for most of the
	// AckWait: the job may be another delivery's now.
	lost atomic.Bool
	// confirmed is when the server last confirmed the job's progress
	// (UnixNano): the job is surely this delivery's until two thirds of
	// the AckWait after it.
	confirmed atomic.Int64
	// ended is set once the executor returned: no heartbeat event may
	// follow the finish, which must stay the stage's last stored event.
	ended bool
	endMu sync.Mutex // guards ended; held while a heartbeat event is published
	// artifacts are what the attempt stored after its commands succeeded;
	// set before the attempt concludes, read by report.
	artifacts []wire.Artifact
}

// safeUntil is until when the job is surely this delivery's: two thirds
// of the AckWait after the server last confirmed its progress. The server
// redelivers it only an AckWait after the last progress it heard of.
func (j *job) safeUntil() time.Time {
	return time.Unix(0, j.confirmed.Load()).Add(2 * j.every())
}

// every is the heartbeat interval of the job: a third of its AckWait.
func (j *job) every() time.Duration { return max(j.limits.ackWait/3, 10*time.Millisecond) }

// readTimeout bounds a run document read made at a heartbeat, so that
// one slow read never outlasts a heartbeat interval.
func (j *job) readTimeout() time.Duration { return min(j.every(), 5*time.Second) }

// judgeTimeout bounds the read that judges the job: heartbeats start
// after it, so the first one still comes within the AckWait.
func (j *job) judgeTimeout() time.Duration { return min(j.limits.ackWait/2, 5*time.Second) }

// setAttempt makes the job run as attempt.
func (j *job) setAttempt(attempt int) {
	if attempt == j.Attempt {
		return
	}
	j.Attempt = attempt
	if j.Env == nil {
		j.Env = map[string]string{}
	}
	j.Env["WEFT_ATTEMPT"] = strconv.Itoa(attempt)
}

// runJob handles one job message to its end: it judges the job against
// the run document, heartbeats from then on, runs the stage with its
// executor, streams its output, reports it finished and acks it. When ctx
// ends first (the agent stops) the stage is killed and the job handed
// back for another agent.
func (a *Agent) runJob(ctx context.Context, msg jetstream.Msg, limits jobLimits) {
	j := &job{msg: msg, limits: limits, delivered: 1, taken: time.Now()}
	j.confirmed.Store(j.taken.UnixNano())
	if err := json.Unmarshal(msg.Data(), &j.Job); err != nil {
		a.log.Error().Err(err).Str("subject", msg.Subject()).Msg("terminating malformed job")
		_ = msg.Term()
		return
	}
	if wait := time.Until(j.NotBefore); wait > 0 {
		// A retry's backoff: JetStream hands the job back when it is due.
		if err := msg.NakWithDelay(wait); err != nil {
			a.log.Warn().Err(err).Msg("nak a retry before its time")
		}
		return
	}
	var seq uint64
	if meta, err := msg.Metadata(); err == nil {
		j.delivered, seq = int(meta.NumDelivered), meta.Sequence.Stream
	}
	// Cleanup and reporting must outlive the agent's context.
	bg := context.WithoutCancel(ctx)
	j.log = a.log.With().Str("run_id", j.RunID).Str("stage", j.Stage.Key).Int("job", j.Job.Job).
		Str("queue", j.Stage.Queue).Str("tier", string(j.Tier)).Int("delivery", j.delivered).Logger()

	doc, read := a.readStage(ctx, j.RunID, j.Stage.Key, j.judgeTimeout())
	d := judge(doc, read, j.Job, j.delivered, seq)
	switch d.verdict {
	case drop:
		j.log.Info().Str("why", d.why).Msg("job dropped unrun")
		if err := msg.Term(); err != nil {
			j.log.Warn().Err(err).Msg("terminate job")
		}
		return
	case later:
		j.log.Info().Str("why", d.why).Dur("delay", d.delay).Msg("job handed back unjudged")
		if err := msg.NakWithDelay(d.delay); err != nil {
			j.log.Warn().Err(err).Msg("nak job")
		}
		return
	}
	if j.delivered > 1 && a.settledEarlier(ctx, j, doc) {
		return
	}
	j.setAttempt(d.attempt)
	j.log = j.log.With().Int("attempt", j.Attempt).Logger()
	if d.verdict == refuse {
		j.log.Info().Str("why", d.why).Msg("job not started")
		a.report(bg, j, result{exitCode: -1, category: wire.CategoryCancelled, message: "run cancelled before start"}, 0)
		return
	}
	if d.why != "" {
		j.log.Info().Str("why", d.why).Msg("job runs as a later attempt")
	}

	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	j.cancel = cancel
	// Heartbeats start now, before the workspace, the image pull and the
	// container: a pull longer than AckWait must not get the job
	// redelivered to another agent.
	done := make(chan struct{})
	var hb sync.WaitGroup
	hb.Go(func() { a.keepalive(bg, j, done) })
	// The keepalive goes on until the job is reported or handed back: a
	// report that takes long (the server is away) must not get the job
	// redelivered and run again while it is on its way.
	defer func() {
		close(done)
		hb.Wait()
	}()
	c, logSeq := a.attempt(ctx, jctx, j)
	j.endMu.Lock() // waits for a heartbeat event on its way
	j.ended = true
	j.endMu.Unlock()

	switch c.ending {
	case silent:
		j.log.Warn().Msg("this attempt no longer holds its job (another took it over, or the server was away too long); stopped it, reporting nothing")
	case discard:
		j.log.Warn().Msg("another agent runs this attempt; stopped this copy, reporting nothing")
		if err := msg.Term(); err != nil {
			j.log.Warn().Err(err).Msg("terminate a copy of a job")
		}
	case handBack:
		if a.holds(bg, j) {
			j.log.Info().Msg("agent stopping, job handed back")
			if err := msg.Nak(); err != nil {
				j.log.Warn().Err(err).Msg("nak")
			}
		}
	case retry:
		if a.holds(bg, j) {
			if err := msg.NakWithDelay(c.delay); err != nil {
				j.log.Warn().Err(err).Msg("nak for an infrastructure retry")
			}
		}
	case report:
		if j.lost.Load() {
			// The stage ended, but the server was away for most of the
			// AckWait: its job may run elsewhere by now, and a late finish
			// would make two. Nothing is reported; a redelivery runs it.
			j.log.Warn().Msg("stage ended while the server was away; reporting nothing")
			break
		}
		a.report(bg, j, c.res, logSeq)
	}
}

// attempt runs a judged job's stage: it registers the job for cancel
// notices, prepares the workspace, streams the output and runs the
// executor. It returns how the attempt ends and the stream sequence of
// its last log batch. ctx is the agent's, jctx the job's.
func (a *Agent) attempt(ctx, jctx context.Context, j *job) (conclusion, uint64) {
	bg := context.WithoutCancel(ctx)
	if !a.register(j) {
		j.log.Info().Msg("run already cancelled, not starting")
		return conclusion{ending: report, res: result{exitCode: -1, category: wire.CategoryCancelled, message: "run cancelled before start"}}, 0
	}
	defer a.unregister(j)

	ex, refusal := a.executorFor(&j.Job)
	if ex == nil {
		// This agent cannot run such stages at all: no point retrying.
		return conclusion{ending: report, res: result{exitCode: -1, category: wire.CategoryInfra, message: refusal}}, 0
	}
	dir, err := a.workspaceFor(j)
	if err != nil {
		res := result{exitCode: -1, category: wire.CategoryInfra, message: fmt.Sprintf("workspace: %v", err)}
		return conclude(res, context.Cause(jctx), ctx.Err() != nil, j.delivered, j.limits.maxDeliver, j.Stage.Timeout), 0
	}

	logs := newLogStream(a.js, subjects.Logs(j.RunID, j.Stage.Key), j.Attempt, a.cfg.LogFlush, a.cfg.LogCap, j.log)
	var wg sync.WaitGroup
	wg.Go(func() { logs.run(bg) })

	runCtx := jctx
	if j.Stage.Timeout > 0 {
		var stop context.CancelFunc
		runCtx, stop = context.WithTimeoutCause(jctx, j.Stage.Timeout, errTimeout)
		defer stop()
	}
	started := func(at time.Time) {
		j.started.Store(true)
		// Not waited for: the stage runs while the server stores it; the
		// finish (on the same connection, so stored after it) waits.
		if f := a.publishEventAsync(a.event(j, wire.Started, at), j.log); f != nil {
			j.startedAck.Store(&f)
		}
	}
	note := func(line string) { logs.write(streamSystem, line) }
	var (
		res   result
		cache *stageCache
	)
	if err := a.checkout(runCtx, j, dir, note); err != nil {
		res = result{exitCode: -1, category: wire.CategoryInfra, message: err.Error()}
	} else if err := a.restoreArtifacts(runCtx, j, dir, note); err != nil {
		res = artifactFailure("restore artifacts", err)
	} else {
		cache = a.restoreCache(runCtx, j, dir, note)
		spec := execSpec{job: &j.Job, delivery: j.delivered, commands: j.Stage.Commands, env: envList(j.Env), dir: dir, image: j.Stage.Image}
		netw, err := a.stageNet(runCtx, j)
		if err != nil {
			res = result{exitCode: -1, category: wire.CategoryInfra, message: fmt.Sprintf("stage network: %v", err)}
		} else {
			spec.net = netw
			res = ex.run(runCtx, spec, started, logs.write)
			if netw != nil {
				if err := netw.Close(); err != nil {
					j.log.Warn().Err(err).Msg("remove stage network")
				}
			}
		}
	}
	if res.exitCode == 0 && res.category == wire.CategoryNone {
		arts, err := a.storeArtifacts(runCtx, j, dir, note)
		if err != nil {
			res = artifactFailure("store artifacts", err)
		}
		j.artifacts = arts
	}
	if res.exitCode == 0 && res.category == wire.CategoryNone {
		a.saveCache(runCtx, j, cache, note)
	}
	c := conclude(res, context.Cause(runCtx), ctx.Err() != nil, j.delivered, j.limits.maxDeliver, j.Stage.Timeout)
	if c.ending == retry {
		logs.write(streamSystem, fmt.Sprintf("weft: %s; retrying in %s (delivery %d of %d)", res.message, c.delay, j.delivered, j.limits.maxDeliver))
	}
	logs.close()
	wg.Wait()
	return c, logs.lastSeq()
}

// keepalive holds the job while the agent works on it, from its judgement
// until done is closed (after the job was reported or handed back): every
// third of the job's AckWait it tells JetStream the job is in progress,
// reads the run document once and stops the stage, to report nothing,
// when another attempt holds the job, or cancels it when its run is being
// cancelled (so a cancel notice the agent missed still ends it). Once the
// stage runs it also publishes a heartbeat event.
//
// A progress report counts once the server confirmed it (a flush after
// it). With none confirmed for two thirds of the AckWait (the server or
// the network is away), the server may redeliver the job to another
// agent before this one can tell it anything: the stage is killed at
// once and nothing is reported, so that two attempts never run at once.
func (a *Agent) keepalive(ctx context.Context, j *job, done <-chan struct{}) {
	every := j.every()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			if err := j.msg.InProgress(); err != nil {
				j.log.Warn().Err(err).Msg("in progress")
			} else if err := a.nc.FlushTimeout(j.readTimeout()); err == nil {
				j.confirmed.Store(time.Now().UnixNano())
			}
			if time.Now().After(j.safeUntil()) {
				if !j.lost.Load() {
					j.log.Warn().Msg("no word from the server; stopping the stage before the job is redelivered")
				}
				j.lost.Store(true)
				j.cancel(errLost)
				continue
			}
			doc, read := a.readStage(ctx, j.RunID, j.Stage.Key, j.readTimeout())
			switch standingOf(doc, read, j.Job, j.Attempt, a.cfg.ID) {
			case superseded, movedOn:
				// This agent lost the job (it was redelivered while this one
				// was unreachable): stop, so the zombie attempt's work and
				// output end here.
				j.cancel(errSuperseded)
				return
			case duplicate:
				j.cancel(errDuplicate)
				return
			case cancelling:
				j.cancel(errRunCancelled)
			}
			j.endMu.Lock()
			if j.started.Load() && !j.ended {
				a.publishEvent(ctx, a.event(j, wire.Heartbeat, now), every, j.log)
			}
			j.endMu.Unlock()
		}
	}
}

// holds reports whether the job is still this attempt's, by a fresh read
// of the run document: nats-server takes an ack or a nak from any
// delivery of a message, so an attempt that lost its job must not touch
// the message the attempt that took over holds.
//
// Within half the AckWait of taking the delivery no other delivery of the
// message can exist yet (the server redelivers only after an AckWait
// without word), so a short stage acks without reading.
func (a *Agent) holds(ctx context.Context, j *job) bool {
	if time.Since(j.taken) < j.limits.ackWait/2 {
		return true
	}
	doc, read := a.readStage(ctx, j.RunID, j.Stage.Key, 5*time.Second)
	switch st := standingOf(doc, read, j.Job, j.Attempt, a.cfg.ID); st {
	case superseded, movedOn, duplicate:
		j.log.Warn().Msg("another attempt holds the stage: leaving its job alone")
		return false
	}
	return true
}

// report publishes the finished event and then acks the job, so a crash
// in between redelivers the job rather than losing the result. An attempt
// that no longer holds its job reports nothing and acks nothing.
func (a *Agent) report(ctx context.Context, j *job, res result, logSeq uint64) {
	if !a.holds(ctx, j) {
		return
	}
	if f := j.startedAck.Load(); f != nil {
		select {
		case <-(*f).Ok():
		case err := <-(*f).Err():
			j.log.Warn().Err(err).Msg("started event not stored")
		case <-time.After(time.Until(j.safeUntil())):
		}
	}
	ev := a.event(j, wire.Finished, time.Now())
	ev.ExitCode, ev.Category, ev.Message, ev.LogSeq = res.exitCode, res.category, res.message, logSeq
	if ev.Category == wire.CategoryNone && ev.ExitCode == 0 {
		ev.Artifacts = j.artifacts
	}
	// The finish must be stored while the job is surely this delivery's:
	// a finish stored after another delivery took the job over would be a
	// second result. Past that the job is left to be redelivered.
	if !a.publishEvent(ctx, ev, time.Until(j.safeUntil()), j.log) {
		// Leave the job un-acked: it is redelivered after AckWait.
		return
	}
	// A plain ack: should it be lost, the job is redelivered, and the
	// redelivery finds the finish stored (settledEarlier) and acks it
	// unrun. Waiting for the server to confirm it would cost every stage
	// a round trip.
	if err := j.msg.Ack(); err != nil {
		j.log.Warn().Err(err).Msg("ack")
	}
	j.log.Info().Int("exit_code", res.exitCode).Str("category", string(res.category)).Msg("stage finished")
}

// event returns a stage event of the job's attempt.
func (a *Agent) event(j *job, typ wire.EventType, at time.Time) wire.Event {
	return wire.Event{Type: typ, RunID: j.RunID, Stage: j.Stage.Key, Attempt: j.Attempt, Job: j.Job.Job, Agent: a.cfg.ID, Time: at}
}

// publishEvent publishes a stage event and waits up to timeout for the
// stream to store it, trying again while it cannot (a cluster electing
// the stream's leader, the connection moving to another server); it
// reports whether it was stored. An event but a heartbeat carries an id
// of its own, so the stream drops the copy a retry sends after an
// acknowledgement was lost.
func (a *Agent) publishEvent(ctx context.Context, ev wire.Event, timeout time.Duration, log zerolog.Logger) bool {
	data, err := json.Marshal(ev)
	if err != nil {
		log.Error().Err(err).Msg("encode event")
		return false
	}
	subj := subjects.StageEvent(ev.RunID, ev.Stage)
	var opts []jetstream.PublishOpt
	if ev.Type == wire.Heartbeat {
		subj = subjects.Heartbeat(ev.RunID, ev.Stage)
	} else {
		opts = append(opts, jetstream.WithMsgID(subjects.EventMsgID(ev.RunID, ev.Stage, ev.Job, ev.Attempt, string(ev.Type))))
	}
	if _, tries, err := publishRetrying(ctx, a.js, subj, data, timeout, opts...); err != nil {
		log.Error().Err(err).Str("event", string(ev.Type)).Int("tries", tries).Msg("publish event")
		return false
	}
	return true
}

// publishEventAsync publishes a stage event without waiting for the
// stream to store it; it returns the pending acknowledgement, or nil when
// the event could not even be sent.
func (a *Agent) publishEventAsync(ev wire.Event, log zerolog.Logger) jetstream.PubAckFuture {
	data, err := json.Marshal(ev)
	if err != nil {
		log.Error().Err(err).Msg("encode event")
		return nil
	}
	f, err := a.js.PublishAsync(subjects.StageEvent(ev.RunID, ev.Stage), data)
	if err != nil {
		log.Error().Err(err).Str("event", string(ev.Type)).Msg("publish event")
		return nil
	}
	return f
}

// envList turns an environment map into KEY=VALUE entries, sorted.
func envList(env map[string]string) []string {
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out
}

// settledEarlier deals with a redelivered job that an earlier delivery
// may have finished, and reports whether it did: an earlier delivery ran
// the job to its end and stored its finish, but its ack was lost (its
// agent died, or the server was away) before a dispatcher recorded it in
// the run document. The stored finish stands: the job is acked unrun.
// When the stored events cannot be read the job is handed back, since
// running it could run it twice.
func (a *Agent) settledEarlier(ctx context.Context, j *job, doc *wire.StageRun) bool {
	done, err := a.finishedAlready(ctx, j, doc)
	bg := context.WithoutCancel(ctx)
	switch {
	case err != nil:
		j.log.Info().Err(err).Dur("delay", unreadableDelay).Msg("redelivered job handed back: its stored events are unreadable")
		if err := j.msg.NakWithDelay(unreadableDelay); err != nil {
			j.log.Warn().Err(err).Msg("nak job")
		}
		return true
	case done:
		j.log.Info().Msg("redelivered job already finished; acked unrun")
		actx, cancel := context.WithTimeout(bg, 5*time.Second)
		defer cancel()
		if err := j.msg.DoubleAck(actx); err != nil {
			j.log.Warn().Err(err).Msg("ack")
		}
		return true
	}
	return false
}

// finishedAlready reports whether the last stored event of the job's stage
// is a finish of this job at the attempt the run document names or later:
// the job ran to its end already. A stage with no event says no; a read
// that fails is an error.
func (a *Agent) finishedAlready(ctx context.Context, j *job, s *wire.StageRun) (bool, error) {
	if s == nil {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, j.judgeTimeout())
	defer cancel()
	m, err := a.events.GetLastMsgForSubject(ctx, subjects.StageEvent(j.RunID, j.Stage.Key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("last event of %s/%s: %w", j.RunID, j.Stage.Key, err)
	}
	var ev wire.Event
	return json.Unmarshal(m.Data, &ev) == nil && finishOf(ev, j.Job.Job, s.Attempt), nil
}

// readStage reads the document of a stage from the stages bucket for
// judging its job, waiting at most timeout, and says how the read went. A
// job is published after its stage's document is written, so a stage
// with no document is either one whose document the read lags behind
// (pending, as far as the job can tell) or one of a run that is gone,
// which its run's events tell apart (agents read no run document).
func (a *Agent) readStage(ctx context.Context, runID, key string, timeout time.Duration) (*wire.StageRun, docRead) {
	st, read := a.readStageDoc(ctx, runID, key, timeout)
	if read != docMissing {
		return st, read
	}
	switch a.lastRunEvent(ctx, runID, timeout) {
	case runEnded, runGone:
		return nil, docMissing
	case runUnknown:
		return nil, docUnreadable
	}
	return &wire.StageRun{Key: key, State: wire.StagePending, ExitCode: -1}, docFound
}

// readStageDoc reads the document of a stage, waiting at most timeout:
// docMissing when it has none.
func (a *Agent) readStageDoc(ctx context.Context, runID, key string, timeout time.Duration) (*wire.StageRun, docRead) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, _, err := runstore.ReadStage(ctx, a.stages, runID, key)
	if err != nil {
		a.log.Debug().Err(err).Str("run_id", runID).Str("stage", key).Msg("read stage document")
		return nil, docUnreadable
	}
	if st == nil {
		return nil, docMissing
	}
	return st, docFound
}

// lastRunEvent reads what the events stream says of a run's end, waiting
// at most timeout: its last run event, and when it has none its age (in
// its id) against the events' retention.
func (a *Agent) lastRunEvent(ctx context.Context, runID string, timeout time.Duration) runEnd {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	m, err := a.events.GetLastMsgForSubject(ctx, subjects.RunEvent(runID))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		id, _ := ulid.Parse(runID)
		if keep := a.events.CachedInfo().Config.MaxAge; keep > 0 && time.Since(ulid.Time(id.Time())) > keep {
			return runGone
		}
		return runLive
	case err != nil:
		a.log.Debug().Err(err).Str("run_id", runID).Msg("read run events")
		return runUnknown
	}
	var ev wire.Event
	if json.Unmarshal(m.Data, &ev) == nil && ev.Type == wire.RunFinished {
		return runEnded
	}
	return runLive
}

// readRunEnd says whether the run holding a lane has ended, waiting at
// most timeout: its run events say (lastRunEvent), and a run they call
// live whose stage that took the lane has no document is gone.
func (a *Agent) readRunEnd(ctx context.Context, h laneHolder, timeout time.Duration) runEnd {
	end := a.lastRunEvent(ctx, h.run, timeout)
	if end != runLive || h.stage == "" {
		return end
	}
	switch _, read := a.readStageDoc(ctx, h.run, h.stage, timeout); read {
	case docMissing:
		return runGone
	case docUnreadable:
		return runUnknown
	}
	return runLive
}

// checkout puts the job's commit in its workspace before the stage's
// first command, when its run builds one (Job.CloneURL).
func (a *Agent) checkout(ctx context.Context, j *job, dir string, note func(string)) error {
	if j.CloneURL == "" {
		return nil
	}
	start := time.Now()
	if err := gitsrc.Checkout(ctx, j.CloneURL, j.Token, j.Commit, dir); err != nil {
		return fmt.Errorf("check out %s: %w", j.Commit, err)
	}
	note(fmt.Sprintf("weft: workspace at %s (%s)", j.Commit, time.Since(start).Round(time.Millisecond)))
	return nil
}
