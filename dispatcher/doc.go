// Package dispatcher turns triggers into runs and runs into stage jobs. It
// reads triggers from the triggers stream, creates the run document in the
// runs bucket, publishes ready stages on the priority-tiered job subjects,
// and advances the run's state machine from the lifecycle events agents
// publish. It never executes user code and never imports the agent.
//
// The decisions are pure functions: what an event does to a run and which
// stages are ready (state.go), and which waiting runs are admitted into
// which slot (plan.go). The rest applies them to JetStream, one file a
// layer: the consumer loop (dispatcher.go), triggers (trigger.go), events
// and job publishing (events.go), admission (admission.go), the reconcile
// loop (reconcile.go), dead letters (deadletter.go) and the run-document
// store with its cache (store.go). Every change to a run's documents is
// a compare-and-set on the key's revision, so two dispatchers, or a
// restarted one, can work on the same runs: the dispatcher keeps no state
// that is not in JetStream.
//
// A run is stored as package runstore describes: its own document, one
// document per stage, its pipeline spec once per content hash. An event
// rewrites the stage it is about (and the run's document when the run
// changes state), its dependents when they become ready or blocked, and
// nothing else; the store changes its cached view of the run in place,
// recording what the change handed out (wire.Run.Edit), so an event costs
// the same in a 10,000-stage pipeline as in a 10-stage one. What keeps
// several writers of several documents correct is in store.go: a write
// over a stale revision is redone on fresh documents; a change is
// idempotent and derives what follows from the stages' states; after a
// stage ends, the stages its dependents and the run's end rest on are read
// fresh, so that of two dispatchers ending a run's last two stages at
// once, one sees both ended; cancel and replay rewrite every stage not
// ended (replay marks them with its Epoch), so no writer holding an older
// copy of one writes over them. Heartbeats go to WEFT_HEARTBEATS, which no
// dispatcher consumes; the reconcile loop reads a stage's last one only
// when the stage's job is gone. Events of different runs, and triggers of
// different repositories, are handled by several workers at once; those
// of one run or one repository in order.
//
// Decisions taken where the design was silent:
//
//   - The dispatcher re-parses the pipeline text the trigger carries
//     (pipeline.Parse applies the limits, as weft validate does) and
//     encodes the run document it would create and each stage's job,
//     which must fit in one message with the headers of a KV write. A
//     trigger that fails either check creates no run and writes nothing
//     but its outcome in the dedup bucket: refused, reason invalid, with
//     the errors.
//   - Every refusal (invalid, wip, backpressure) is remembered for
//     subjects.TriggerDuplicates, the triggers stream's Nats-Msg-Id window,
//     not for the dedup window: it answers the publishes of one trigger
//     message. A refusal recorded before a trigger message was stored
//     answered an earlier publish of the id and is dropped, so the trigger
//     is decided again. Only a run id is remembered for DedupWindow.
//   - The triggers consumer has MaxDeliver subjects.TriggerMaxDeliver; a
//     trigger whose handling fails is naked with a delay doubling from 1 s
//     (not a consumer BackOff, which would replace the AckWait). A trigger
//     that can never succeed (not a trigger, or a write too large for a
//     message) is given up on its first delivery; any other is given up
//     when its last delivery fails. Giving up records a refusal with the
//     error (reason invalid, or dead_letter for a failure that may pass),
//     replacing the run id unless the run document was written, and
//     copies the message to WEFT_DLQ on weft.dlq.triggers.<repo> with
//     Weft-Error and Weft-Trigger headers, then acks it.
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
//     repair (publish the queued jobs not recorded as published, resend a
//     cancel notice, release an ended run's lease) for a dispatcher that
//     died half-way. A job whose message is recorded (StageRun.JobSeq) is
//     never published again: past the stream's 2-minute Nats-Msg-Id
//     window a second publish would be a second copy.
//   - The reconcile loop walks every lease (every admitted live run, from
//     the lease view), looking at the dispatcher's copy of a run and
//     reading it fresh only when the copy shows something to repair, or
//     is from before the run's admission, or nothing touched it for
//     staleAfter and its run document moved since (one read). A pass costs
//     what the fleet runs, not what waits: a job is looked up only once
//     its consumer delivered it (jobIndex); a job not delivered yet is
//     still stored, or gone when its consumer has none pending. It
//     publishes a queued stage's job that was never recorded as
//     published (a dispatcher died between writing the run and
//     publishing, in admission, a handler, the dead-letter path or the
//     reconcile loop itself), finishes a stage from its stored finished
//     event when its job is gone, queues again (or, in a run being
//     cancelled, cancels) a stage whose job is gone and whose attempt has
//     not heartbeated within its consumer's AckWait, and resends the
//     cancel notice of every run being cancelled. What it found lost is
//     acted on only if the stage still names that job and message, so two
//     passes never requeue a stage twice.
//   - A replay of a stage of a run that ended sends the run back to
//     admission (a waiting message, at the back of the line): it runs
//     holding a WIP slot and its group's lock, like any run.
//
// Admission (admission.go, plan.go) lives in the KV bucket weft_wip and
// the stream WEFT_WAITING:
//
//   - A new run is created waiting, with a message weft.waiting.<repo>.<seq>
//     in WEFT_WAITING, where seq is the trigger's stream sequence, written
//     create-only (expected last subject sequence 0). admit reads a
//     snapshot of a repository (waiting runs in the order their messages
//     were written, held slots lease.<repo>.<slot>, group locks
//     group.<repo>.<hash>, queue depths), plan decides (admit into a slot,
//     wait with a reason, drop the message of a run that no longer waits),
//     and the steps are applied with create-only writes (lock, then slot)
//     and a compare-and-set of the run document. The snapshot holds the
//     first waiting runs only: as many as the free slots could take and
//     one more, read one stream lookup each (next message by subject),
//     and twice as many when runs in it could not take a slot (their
//     group is held, their queue over its bound). A run's message is
//     deleted once it is admitted or ends, so no lookup passes over runs
//     admitted before: a trigger costs the same with 10,000 runs waiting as
//     with 10. The held slots come from a copy of the leases the
//     dispatcher keeps with one watch (leases.go), which holds its own
//     leases before any later snapshot is read; a lease of another
//     dispatcher it has not seen yet is a lost race, planned again on
//     leases read from the bucket. A run further back than the snapshot says it waits for the
//     WIP limit. Arrival order is the order the messages were written,
//     which is trigger order for the triggers of one repository (handled in
//     order by one dispatcher; with several, within the triggers' prefetch);
//     a replayed run goes to the back of the line. A key that already names the run is its own (an admission
//     cut short); a key naming another run is a lost race, and admit plans
//     again on a new snapshot. Nothing is ever released because a race was
//     lost, except a slot the run provably does not use (its document
//     names another one).
//   - Leases and group locks belong to their run and carry no TTL: they
//     are deleted when the run ends, by the dispatcher that ends it, or by
//     the sweep every dispatcher runs every SweepInterval, which deletes a
//     lease or lock whose run ended or is gone and a lease of a run
//     admitted under another key. A TTL renewed by dispatchers would free
//     the slot of a live run whenever none renewed in time (all down, or
//     one stuck behind a long pass), and admission would then exceed the
//     limit. A KV watch on the deletions admits the next waiting runs.
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
