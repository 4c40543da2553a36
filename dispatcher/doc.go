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
//   - retry.automatic retries any failure but a cancel, restricted to
//     command exit codes in retry.exit_status when it is set. Retries are
//     counted in jobs (StageRun.Job), not attempts: a redelivered job runs
//     as the next attempt of the same job. A retry's job carries NotBefore
//     (1 s doubling to 1 min, +-20 % jitter derived from run, stage and
//     job) and an agent that gets it early naks it with that delay.
//   - A job is dead-lettered from the server's max-deliveries advisory,
//     captured in WEFT_ADVISORIES: copied to WEFT_DLQ, deleted from
//     WEFT_JOBS (a work queue keeps it otherwise), its stage failed with
//     category dead_letter. A replay queues the stage as a new job and
//     makes what it skipped pending again; it does not re-enter admission.
//   - With several dispatchers a cached run document may be stale: a
//     decision that nothing changes is taken only on a fresh read, and
//     writes are compare-and-set. A redelivered event is followed by a
//     repair (republish the queued jobs, release an ended run's lease) for
//     a dispatcher that died half-way. The reconcile loop checks each
//     admitted run's job messages by their recorded stream sequence.
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
