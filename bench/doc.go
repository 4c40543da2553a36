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
//
// It imports the dispatcher and the agent to wire them like `weft run`;
// nothing else imports it but the CLI.
package bench
