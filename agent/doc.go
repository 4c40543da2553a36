// Package agent runs stage jobs. An agent serves one or more queues with a
// number of slots; whenever a slot is free it takes the job of the highest
// non-empty tier of its queues, judges it against the run document, runs
// it with an executor (a host process or a containerd container),
// heartbeats while it holds it, streams its output to the logs stream,
// publishes its lifecycle events (each carrying its attempt and job
// numbers) and acknowledges the job. It never decides what runs next and
// never imports the dispatcher.
//
// Decisions taken where the design was silent:
//
//   - A stage's commands run as one `sh -c` script with `set -e`, so `cd`
//     and exported variables carry from one command to the next and the
//     first failing command stops the stage (as GitHub Actions and
//     Buildkite do).
//   - A host stage runs in its own process group; a timeout or cancel
//     sends SIGTERM to the group and SIGKILL after Config.KillGrace, and
//     whatever the stage left running in the background is killed when the
//     script exits.
//   - Artifacts (artifacts.go): the artifacts of the stages a job depends
//     on, directly or not, are restored into its workspace before its
//     first command (the job names their finished events, Job.Restore),
//     through an os.Root of the workspace so no path or symlink writes
//     outside it. After the commands succeed the stage's patterns are
//     matched (doublestar, following symlinks so that one leading out is
//     seen and refused), every size is checked against the limits before
//     anything is stored, and the list is sent in the finished event. A
//     refusal (a path, a size) fails the stage with category artifact; a
//     store that cannot be reached is an infrastructure failure, retried.
//   - A stage's stdout and stderr share one pipe, as on a terminal, so its
//     log keeps the order in which lines were written.
//   - Output (logs.go) goes to the logs stream in batches of at most 512
//     lines or 128 KiB, published when full or 50 ms after their first
//     line, numbered from 1 per attempt; a line over MaxLineBytes is
//     split. The stage blocks while a batch is published, so a stage that
//     prints faster than the bus stores is slowed, never buffered. The
//     log cap (Config.LogCap, DefaultLogCap) applies to each attempt, not
//     to a stage's attempts together: an agent cannot know what earlier
//     attempts elsewhere wrote without reading the stream. Over the cap
//     the log keeps its head, published as it comes, and its tail, held
//     in a bounded ring (DefaultLogTail, at most 16,384 lines) and
//     published after a note of what was dropped when the stage ends: a
//     follower sees nothing of a capped stage between the end of the head
//     and the end of the stage. Every line counts against the cap, weft's
//     own notes included, but for the note of what was dropped.
//   - A host stage's environment is the job's over the variables of
//     Config.Env (the agent's own, from the CLI) that DefaultEnvAllow and
//     Config.EnvAllow name (env.go): never the rest, and never weft's own
//     (WEFT_SERVER, WEFT_CREDS, ...), so a stage does not get the agent's
//     credentials or its server's address.
//   - Caches (cache.go): a stage's cache is restored after its artifacts
//     and before its first command, and saved after its commands succeed
//     when its key has no entry; a cache problem is noted in the log and
//     never fails the stage.
//   - Each run gets a workspace under Config.WorkDir with a stable path
//     per repository, pipeline and lane (workspace.go), shared by its
//     stages on this agent and by no other run while it holds it. Its
//     lane is released (the workspace removed, unless
//     Config.KeepWorkspaces) when the run's finished notice arrives, by a
//     sweep (at start and every Config.SweepInterval, a minute by
//     default) once no job of the run is active here and the run is
//     terminal or gone from the runs bucket (a run whose document cannot
//     be read keeps it), and when the agent stops. A workspace is renamed
//     to <WorkDir>/.removing-<ULID>, under the lock that registers jobs,
//     before it is deleted, so a job that starts meanwhile gets a fresh
//     one. Nothing in WorkDir but lanes with a marker and trash is
//     touched.
//   - An agent that is stopped while a stage runs kills the stage and naks
//     the job, so another agent runs it; it reports no result for it. A
//     stage that succeeded all the same is reported.
//   - Every delivered job, not only a redelivered one, is judged against
//     the run document before it runs (judge.go, pure): the message is
//     only a copy of the stage's job, and the dispatcher may republish it
//     after the stream's 2-minute Nats-Msg-Id window. Unknown run, stage
//     gone or on a later job, stage ended, or a message at another stream
//     sequence than the document's JobSeq: terminated unrun. A document
//     older than the job (a lagging replica: an earlier job number, or the
//     stage still pending) or unreadable: handed back with a short delay,
//     never dropped. A running stage's first delivery is a copy (dropped);
//     a redelivery takes the stage over as the next attempt. A queued
//     stage's job runs as the attempt it was queued as, redelivered or
//     not: no attempt of it started, so an earlier delivery was handed
//     back (a retry's backoff, an infrastructure retry) or lost before it
//     started, and a hand-back is a delivery, not an attempt (so
//     WEFT_ATTEMPT does not skip numbers). Should that earlier holder
//     still be alive and start too, the first started event names the
//     attempt's agent in the document and the other stops at its next
//     heartbeat. A job of a run being cancelled is not started: it is
//     reported finished as cancelled (so the dispatcher can end the
//     stage) and acked.
//   - Heartbeats start the moment a job is judged (its run document read
//     waits at most half the AckWait), before the workspace, the
//     image pull and the container, every third of the AckWait of the
//     consumer the job came from (read when the agent starts; an agent
//     serving queues with different AckWaits keeps each job to its own).
//     Each heartbeat calls InProgress, then reads the run document once:
//     the agent stops a stage, reporting nothing, when a later attempt or
//     job holds it, or the same attempt started on another agent; and it
//     cancels the stage when the run is being cancelled, so a cancel
//     notice the agent missed still ends the stage. Heartbeat events are
//     published only once the stage runs.
//   - nats-server takes an ack or a nak from any delivery of a message, so
//     before it acks (or naks) a job it held while the stage ran, the
//     agent reads the run document again: an attempt that another attempt
//     superseded publishes nothing and leaves the message to its holder. A
//     document that cannot be read does not stop the ack. Within half the
//     AckWait of taking a delivery no other delivery of it can exist yet,
//     so a short stage acks without that read (measured: 194 vs 160
//     stages/s in BenchmarkLifecycle). The message of
//     a job whose stage moved on is left too: its next delivery is judged
//     stale and terminated.
//   - Once the server has confirmed no progress report (a flush after
//     InProgress) for two thirds of the AckWait, the server may hand the
//     job to another agent before this one can say anything: the stage is
//     killed at once, without a grace, and nothing is reported (not even
//     for a stage that had ended by then: a late finish beside the
//     redelivered job's attempt would make two). So is a stage another
//     attempt took over, or a copy another agent won. The
//     keepalive lasts until the job is reported or handed back, so a slow
//     report does not get the job redelivered and run again.
//   - A redelivered job whose stage's last stored event is a finish of
//     that job (its ack was lost, and no dispatcher recorded the finish
//     yet) is acked unrun: the stored finish stands. When those events
//     cannot be read the job is handed back rather than run.
//   - A host stage's shell gets SIGKILL when its agent dies (Pdeathsig, on
//     a goroutine locked to its thread).
//   - Infrastructure failures are retried by nak with backoff until the
//     MaxDeliver of the job's consumer; a stage this agent cannot run at
//     all (an image without containerd) fails at once. A stage ended by a
//     timeout, a cancel or a takeover is classified by that cause, even
//     when the executor saw an infrastructure error (a pull cut short).
//   - Agents learn of new jobs from the headers-only republish of stored
//     jobs (weft.wake.<queue>.<tier>), through a core NATS queue-group
//     subscription (group weft_agents) that an agent holds only while it
//     has a free slot: the server hands each wake-up to one idle agent,
//     which fetches once, from that tier (Fetch(1) waiting up to 20 ms,
//     as the consumer counts a job a moment after its republish). When
//     every idle agent fetched on every wake-up and rescanned every
//     second, one-stage runs one at a time cost 2 pull requests each with
//     one idle agent, about 40 with twenty and 415 with two hundred; now
//     they cost 5 at each of those sizes (one fetch for the job, and the
//     sweep of four tiers when its slot frees; TestIdleAgentsDoNotHerd),
//     and dispatch latency is the same or lower.
//   - An agent that fills its last slot drains that subscription: the
//     server sends it nothing once it has the unsubscribe, and a wake-up
//     that was already on its way, or that the agent held unused, is
//     published again to the group, where another idle agent gets it.
//     Having left the group, the agent misses the wake-ups of the jobs
//     stored while it is full, so when a slot frees it joins again and
//     sweeps its queues: one no-wait fetch per tier, critical first,
//     stopping at the first job (a free slot takes the highest non-empty
//     tier). So a saturated agent spends a round trip per tier above the
//     one it takes work from, per job, where one that heard every wake-up
//     spent one (BenchmarkLifecycle measured the same throughput); the
//     alternative, a plain subscription while full, would send every
//     wake-up to every busy agent. A wake-up for a paused queue is
//     dropped. A resume makes the sweep of the queue due at a random
//     point in the first quarter of RescanInterval, so agents that see it
//     together share one sweep, as below. An agent that starts sweeps at
//     once, after its subscriptions reached the server: a job published
//     before then announced itself to nobody, and weft run's one agent
//     must not wait a quarter interval for it (weft run of a one-stage
//     pipeline: about 120 ms instead of 200).
//   - Redeliveries and hand-backs are not republished, so the idle agents
//     of a queue share a rescan: an agent starting a sweep publishes a
//     notice (weft.scanned.<queue>), and every agent of the queue
//     postpones its own rescan to a random point in the second half of
//     RescanInterval after the last sweep it started or heard of. A job
//     nothing announces waits at most RescanInterval while an agent has a
//     free slot, and the fleet rescans about as often as one agent (not
//     once per agent per interval). An agent that finds a job by a sweep
//     and is full with it passes a wake-up on for that tier, since more
//     may wait there (a burst of redeliveries), and a stopping agent
//     passes on one for each job it hands back. The queue-group and
//     notice names belong in package subjects; they sit in scan.go until
//     it takes them.
//   - Labels (Config.Labels): an agent serves, besides its queues, the
//     label queue (subjects.LabelQueue) of every subset of its labels,
//     which is where the dispatcher sends the jobs of stages that ask for
//     those labels; at most subjects.MaxLabels, so 16 queues per queue.
//   - Drain (Drain, SIGTERM in the CLI, a request on
//     subjects.AgentDrain): the agent stops taking jobs, finishes those it
//     runs (stopping them after Config.DrainTimeout), leaves the registry
//     and Run returns nil; Config.ExitWhenIdle drains an agent that held
//     no job for that long.
//   - Events and log batches are published with publishRetrying, which
//     tries again while the server cannot be reached (a cluster electing
//     a leader, a leaf link coming back), each with a message id so a
//     retry after a lost acknowledgement is stored once.
package agent
