package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Causes of a stage's context ending early.
var (
	errTimeout      = errors.New("agent: stage timed out")
	errRunCancelled = errors.New("agent: run cancelled")
	errSuperseded   = errors.New("agent: another attempt took the stage over")
)

// job is one stage attempt running on this agent.
type job struct {
	wire.Job
	cancel context.CancelCauseFunc
}

// runJob runs one job message to its end: started event, heartbeats, the
// executor, log streaming, finished event, ack. When ctx ends first (the
// agent stops) the stage is killed and the job nak'ed for another agent.
// jobLimits are the job consumer's settings that shape a job's handling.
type jobLimits struct {
	ackWait    time.Duration // heartbeats go every third of it
	maxDeliver int           // infrastructure failures are retried until it
}

// infraBackoff is the delay before delivery n+1 after an infrastructure
// failure on delivery n.
func infraBackoff(n int) time.Duration {
	return min(time.Second<<min(n-1, 6), time.Minute)
}

func (a *Agent) runJob(ctx context.Context, msg jetstream.Msg, limits jobLimits) {
	var j job
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
	delivered := 1
	if meta, err := msg.Metadata(); err == nil {
		delivered = int(meta.NumDelivered)
	}
	if delivered > 1 && !a.takeOver(ctx, msg, &j) {
		return
	}
	log := a.log.With().Str("run_id", j.RunID).Str("stage", j.Stage.Key).Int("attempt", j.Attempt).
		Str("queue", j.Stage.Queue).Str("tier", string(j.Tier)).Logger()
	jctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	j.cancel = cancel
	// Cleanup and reporting must outlive the agent's context.
	bg := context.WithoutCancel(ctx)

	if !a.register(&j) {
		log.Info().Msg("run already cancelled, not starting")
		a.finish(bg, msg, &j, result{exitCode: -1, category: wire.CategoryCancelled, message: "run cancelled before start"}, 0, log)
		return
	}
	defer a.unregister(&j)

	dir, err := a.workspace(j.RunID)
	if err == nil {
		err = os.MkdirAll(dir, 0o750)
	}
	if err != nil {
		a.finish(bg, msg, &j, result{exitCode: -1, category: wire.CategoryInfra, message: fmt.Sprintf("workspace: %v", err)}, 0, log)
		return
	}

	logs := newLogStream(a.js, subjects.Logs(j.RunID, j.Stage.Key), j.Attempt, a.cfg.LogFlush, log)
	var wg sync.WaitGroup
	wg.Go(func() { logs.run(bg) })

	runCtx := jctx
	if j.Stage.Timeout > 0 {
		var stop context.CancelFunc
		runCtx, stop = context.WithTimeoutCause(jctx, j.Stage.Timeout, errTimeout)
		defer stop()
	}
	hbDone := make(chan struct{})
	started := func(at time.Time) {
		a.publishEvent(bg, wire.Event{Type: wire.Started, RunID: j.RunID, Stage: j.Stage.Key, Attempt: j.Attempt, Agent: a.cfg.ID, Time: at}, log)
		wg.Go(func() { a.heartbeat(bg, msg, &j, limits.ackWait/3, hbDone, log) })
	}
	var res result
	retry := time.Duration(0)
	if ex, refusal := a.executorFor(&j.Job); ex == nil {
		// This agent cannot run such stages at all: no point retrying.
		res = result{exitCode: -1, category: wire.CategoryInfra, message: refusal}
	} else {
		res = ex.run(runCtx, execSpec{job: &j.Job, commands: j.Stage.Commands, env: envList(j.Env), dir: dir, image: j.Stage.Image}, started, logs.write)
		if res.category == wire.CategoryInfra && ctx.Err() == nil && (limits.maxDeliver <= 0 || delivered < limits.maxDeliver) {
			// Infrastructure failures are retried within the delivery limit.
			retry = infraBackoff(delivered)
			logs.write(streamSystem, fmt.Sprintf("weft: %s; retrying in %s (delivery %d of %d)", res.message, retry, delivered, limits.maxDeliver))
		}
	}
	close(hbDone)
	logs.close()
	wg.Wait()

	if retry > 0 {
		if err := msg.NakWithDelay(retry); err != nil {
			log.Warn().Err(err).Msg("nak for an infrastructure retry")
		}
		return
	}
	switch cause := context.Cause(runCtx); {
	case res.category != wire.CategoryNone && res.category != wire.CategoryCommand:
		// The executor knows best (infra, oom).
	case errors.Is(cause, errTimeout):
		res.category, res.message = wire.CategoryTimeout, fmt.Sprintf("timed out after %s", j.Stage.Timeout)
	case errors.Is(cause, errRunCancelled):
		res.category, res.message = wire.CategoryCancelled, "run cancelled"
	case errors.Is(cause, errSuperseded):
		// The job is another agent's now: report nothing, ack nothing.
		log.Warn().Msg("stage taken over by another attempt; stopped it")
		return
	case ctx.Err() != nil:
		log.Info().Msg("agent stopping, job handed back")
		if err := msg.Nak(); err != nil {
			log.Warn().Err(err).Msg("nak")
		}
		return
	}
	a.finish(bg, msg, &j, res, logs.lastSeq(), log)
}

// finish publishes the finished event and then acks the job, so a crash
// in between redelivers the job rather than losing the result.
func (a *Agent) finish(ctx context.Context, msg jetstream.Msg, j *job, res result, logSeq uint64, log zerolog.Logger) {
	ev := wire.Event{
		Type: wire.Finished, RunID: j.RunID, Stage: j.Stage.Key, Attempt: j.Attempt, Agent: a.cfg.ID,
		Time: time.Now(), ExitCode: res.exitCode, Category: res.category, Message: res.message, LogSeq: logSeq,
	}
	if !a.publishEvent(ctx, ev, log) {
		// Leave the job un-acked: it is redelivered after AckWait.
		return
	}
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := msg.DoubleAck(actx); err != nil {
		log.Warn().Err(err).Msg("ack")
	}
	log.Info().Int("exit_code", res.exitCode).Str("category", string(res.category)).Msg("stage finished")
}

// publishEvent publishes a stage event and waits for the stream to store it.
func (a *Agent) publishEvent(ctx context.Context, ev wire.Event, log zerolog.Logger) bool {
	data, err := json.Marshal(ev)
	if err != nil {
		log.Error().Err(err).Msg("encode event")
		return false
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := a.js.Publish(pctx, subjects.StageEvent(ev.RunID, ev.Stage), data); err != nil {
		log.Error().Err(err).Str("event", string(ev.Type)).Msg("publish event")
		return false
	}
	return true
}

// heartbeat tells JetStream the job is in progress (resetting its AckWait)
// and publishes a heartbeat event every interval until done is closed.
func (a *Agent) heartbeat(ctx context.Context, msg jetstream.Msg, j *job, every time.Duration, done <-chan struct{}, log zerolog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			if a.superseded(ctx, j) {
				// This agent lost the job (it was redelivered while this one
				// was unreachable): stop, so the zombie attempt's work and
				// output end here.
				j.cancel(errSuperseded)
				return
			}
			if err := msg.InProgress(); err != nil {
				log.Warn().Err(err).Msg("in progress")
			}
			a.publishEvent(ctx, wire.Event{Type: wire.Heartbeat, RunID: j.RunID, Stage: j.Stage.Key, Attempt: j.Attempt, Agent: a.cfg.ID, Time: now}, log)
		}
	}
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

// takeOver decides what a redelivered job is: the stage its agent lost
// (it runs as the next attempt) or a stale copy of a stage that moved on
// (it is terminated unrun). It reports whether to run it.
func (a *Agent) takeOver(ctx context.Context, msg jetstream.Msg, j *job) bool {
	log := a.log.With().Str("run_id", j.RunID).Str("stage", j.Stage.Key).Int("job", j.Attempt).Logger()
	r, err := a.runDoc(ctx, j.RunID)
	if err != nil {
		// Without the run document the job cannot be judged: run it as it
		// is; the dispatcher fences it if it is stale.
		log.Warn().Err(err).Msg("redelivered job: run document unreadable")
		return true
	}
	s := r.Stage(j.Stage.Key)
	if s == nil || s.State.Terminal() || s.Job != j.Attempt {
		log.Info().Msg("stale redelivered job dropped")
		_ = msg.Term()
		return false
	}
	if s.State == wire.StageRunning {
		// An agent started it and is gone: this is the next attempt.
		j.Attempt = s.Attempt + 1
		j.Env["WEFT_ATTEMPT"] = strconv.Itoa(j.Attempt)
	}
	log.Info().Int("attempt", j.Attempt).Msg("taking over a redelivered job")
	return true
}

// superseded reports whether the run document shows the stage held by a
// later attempt than j's. An unreadable document is not a reason to stop.
func (a *Agent) superseded(ctx context.Context, j *job) bool {
	r, err := a.runDoc(ctx, j.RunID)
	if err != nil {
		return false
	}
	s := r.Stage(j.Stage.Key)
	return s != nil && s.Attempt > j.Attempt
}

// runDoc reads a run document from the runs bucket.
func (a *Agent) runDoc(ctx context.Context, runID string) (*wire.Run, error) {
	e, err := a.runs.Get(ctx, runID)
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", runID, err)
	}
	var r wire.Run
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("decode run %s: %w", runID, err)
	}
	return &r, nil
}
