// Package autoscale scales the agents of queues by their depth, on one
// machine or through hooks: weft autoscale. A Scaler reads the depth of
// the queues (client.QueueDepths) and the agent registry (client.Agents)
// every interval, decides on each queue with Decide, a pure function of
// the Policy, what it remembers of the queue (State), what it sees
// (Observation) and the time, and applies the decisions that change a
// queue through an Actuator: Local starts and drains `weft agent` child
// processes, Hooks runs shell commands. A Schedule (ParseSchedule) raises
// the minimum of agents at hours of the week.
//
// It reads the fleet through package client and counts in package
// metrics; it imports neither the dispatcher nor the agent: agents are
// processes it starts, and the registry is how it sees them.
//
// Decisions taken where the design was silent:
//
//   - A queue's agents are those the registry shows serving it, whoever
//     started them, draining ones left out: a static agent counts towards
//     the maximum and the minimum. Only agents this process started are
//     ever removed (Local); with hooks, the down hook chooses.
//   - Scale-up is one agent per decision (per interval), not a jump to
//     ceil(waiting/threshold): each step is explainable in one line, and
//     each new agent takes jobs before the next is asked for. Two
//     exceptions jump at once: below the minimum in force, up to it; and
//     a queue with jobs waiting and no agent gets one whatever the
//     threshold (scale from zero, as KEDA's activation does), for a job
//     below the threshold would otherwise wait forever.
//   - After a change, decisions on the queue wait (Settling) until the
//     registry shows the change or Policy.Settle passed: an agent takes
//     a moment to start and register, and without the wait every interval
//     of that moment would start another one. A change that failed is not
//     waited on: the next decision asks again.
//   - Scale-down needs Policy.Cooldown with nothing waiting and nothing
//     running, and removes one agent per decision; the idle clock is
//     reset by work and by a scale-up, not by a scale-down, so an idle
//     queue goes down to its minimum one agent per interval once the
//     cooldown passed.
//   - Local scales down by SIGTERM, which weft agent takes as a drain: it
//     takes no more jobs, finishes the stages it runs and exits, so no
//     stage is killed mid-way (SIGINT would stop them). On shutdown the
//     Scaler closes the actuator, which drains every agent it started and
//     waits for them; Local.Interrupt stops them at once instead. Agents
//     get SIGTERM by Pdeathsig should weft autoscale die without closing.
//   - The newest agent is the one removed: the oldest have warm caches
//     and workspaces (weft agent --keep-workspaces).
//   - Hooks run one at a time on the Scaler's goroutine, each for at most
//     HooksConfig.Timeout; a failing hook is logged and counted, and
//     asked again only by the next decision. A hook is told the target
//     (WEFT_TARGET), so running it twice for the same target is safe for
//     a hook that brings the queue to it.
//   - Schedule rules are `DAYS [HH:MM-HH:MM] min=N`, read in one time
//     zone; the highest minimum in force applies; a range ending at or
//     before its start crosses midnight; a minimum above Policy.Max is
//     refused.
package autoscale
