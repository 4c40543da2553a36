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
//
// Admission (admission.go) lives in the KV bucket weft_wip:
//
//   - A new run is created waiting, with a key wait.<repo>.<seq> where seq
//     is the trigger's stream sequence: arrival order. admit walks a
//     repository's waiting runs in that order and gives each a WIP slot
//     (create-only key lease.<repo>.<slot> with a TTL) while slots are free,
//     then queues its root stages; a run whose concurrency group is held
//     (group.<repo>.<hash>) is passed over and keeps its place. Every run
//     left waiting records why (wip, concurrency_group, backpressure).
//   - Leases and group locks are renewed every LeaseTTL/3 while their run
//     lives, by whichever dispatcher runs. KeyValue.Update writes a revision
//     without a TTL (nats.go v1.55), so renewing publishes the revision with
//     Nats-TTL and the expected last subject sequence instead. The leases of
//     ended or unknown runs are deleted by that sweep; when no dispatcher is
//     alive they expire by TTL. Either way a KV watch on the deletion admits
//     the next waiting runs.
//   - Concurrency groups are scoped to the repository, like WIP.
//     cancel_in_progress cancels the group's run in flight and its older
//     waiting runs; the new run starts when the one in flight has ended.
//   - The refuse policy counts a repository's leases and waiting runs; a
//     refusal's outcome lives TriggerDuplicates (5 s) in the dedup bucket,
//     so the same delivery id can be retried after the retry-after.
//   - Backpressure counts the jobs stored for a queue (queued or running)
//     and is re-checked every RecheckInterval: no event says a queue
//     drained. Counters live under stats.* in weft_wip.
package dispatcher
