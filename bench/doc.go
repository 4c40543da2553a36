// Package bench measures weft's admission and priority guarantees on an
// embedded stack (nats-server, dispatcher, agents in this process), each
// next to a baseline measured in the same run: `weft bench` prints them.
//
//   - Hotfix: a queue saturated by low-tier stages, then one critical
//     stage; its queue time against the same workload through one FIFO
//     subject worked by the same number of workers.
//   - Isolation: the queue time of main stages with and without a burst on
//     the background queue, served by its own agent.
//   - WIP: simultaneous triggers of one repository under a WIP limit: the
//     most runs ever in flight, how many finished, admission order.
//   - Chaos (chaos*.go): a fleet of separate processes (`weft server`, two
//     `weft dispatcher`, agents) run hundreds of runs over several
//     repositories under a WIP limit, with concurrency groups, client
//     cancels and host and container stages, while agents and dispatchers
//     are SIGKILLed at random and the server is restarted once. An
//     independent checker (chaos_check.go, a pure function of what was
//     observed: every event, the stages' own start and end records, host
//     process samples) reports runs lost or stuck, stages finished or run
//     twice, the most runs in flight per repository and per group against
//     their limits, leases and workspaces left, and kill-to-restart
//     times; a scenario that did not exercise a fault or a path is a
//     failure too.
//   - Artifacts (artifacts.go): files stored and read back through weft's
//     artifact store and through the raw Object Store on the same bucket
//     of a `weft server` process, in alternating order, and a 1 GiB file
//     each way with the client's and the server's peak RSS over their RSS
//     before.
//
// The in-process scenarios build their stack with package embedded;
// nothing else imports bench but the CLI.
package bench
