// Package dispatcher turns triggers into runs and runs into stage jobs. It
// reads triggers from the triggers stream, creates the run document in the
// runs bucket, publishes ready stages on the priority-tiered job subjects,
// and advances the run's state machine from the lifecycle events agents
// publish. It never executes user code and never imports the agent.
//
// The decisions (which stages are ready, what an event does to a run) are
// pure functions on a run document in state.go; dispatcher.go applies them
// to JetStream. Every change to a run document is a compare-and-set on the
// key's revision, so two dispatchers, or a restarted one, can work on the
// same runs: the dispatcher keeps no state that is not in JetStream.
//
// Decisions taken where the design was silent:
//
//   - The dispatcher re-parses the pipeline text the trigger carries; a
//     trigger that does not validate creates no run and its outcome (in the
//     dedup bucket) carries the validation errors.
//   - A run document is created with its root stages already queued, and
//     jobs are published after the document is written. A trigger redelivered
//     after a crash finds its run and republishes the queued jobs; the
//     job's Nats-Msg-Id makes that a no-op when they were already sent.
//   - A cancelled run marks its pending and queued stages cancelled at once;
//     running stages stay running until their agent reports them finished,
//     so "cancelled" means the processes are gone. A job of a cancelled
//     run that an agent starts anyway is answered with another cancel
//     notice.
//   - Automatic retries (retry.automatic) apply to stages that failed with
//     a command exit code, restricted to retry.exit_status when it is set;
//     timeouts and cancels are not retried.
package dispatcher
