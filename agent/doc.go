// Package agent runs stage jobs. An agent serves one or more queues with a
// number of slots; whenever a slot is free it takes the job of the highest
// non-empty tier of its queues, runs it with an executor (a host process
// today, a containerd container in a later change), heartbeats while it
// runs, streams its output to the logs stream, publishes its lifecycle
// events and acknowledges the job. It never decides what runs next and
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
//   - A stage's stdout and stderr share one pipe, as on a terminal, so its
//     log keeps the order in which lines were written.
//   - The host environment is Config.Env (the agent's own, from the CLI)
//     overlaid with the job's environment.
//   - Each run gets a workspace directory under Config.WorkDir shared by
//     its stages on this agent, named by the run id; it is removed when
//     the run's finished event arrives or the agent stops. Nothing else in
//     WorkDir is touched.
//   - An agent that is stopped while a stage runs kills the stage and naks
//     the job, so another agent runs it; it reports no result for it.
//   - A redelivered job (its agent died) is checked against the run
//     document: a stale copy is terminated unrun; otherwise it runs as the
//     next attempt. At every heartbeat the agent checks that its attempt
//     still holds the stage, and stops a stage another attempt took over.
//   - A host stage's shell gets SIGKILL when its agent dies (Pdeathsig, on
//     a goroutine locked to its thread).
//   - Infrastructure failures are retried by nak with backoff until the
//     consumer's MaxDeliver; a stage this agent cannot run at all (an
//     image without containerd) fails at once.
//   - Agents learn of new jobs from the headers-only republish of stored
//     jobs (weft.wake.<queue>.<tier>): a wake-up marks its queue and tier
//     pending, and a scan fetches only from pending tiers, highest first,
//     so a busy agent spends one round trip per job, not one per tier.
//     Every RescanInterval a scan fetches from all tiers, which picks up
//     what no wake-up announces (redeliveries, a lost wake-up).
package agent
