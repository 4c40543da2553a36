// Package client is the Go API for asking weft for runs and following them:
// Submit publishes a trigger and returns the run it started, Follow streams
// a run's stage transitions and output until it ends, and Cancel asks for a
// run to be cancelled. GetStatus says what is in flight and why what waits
// is waiting; PauseQueue and ResumeQueue stop and restart a queue;
// DeadLetters and Replay handle jobs that exhausted their deliveries. The CLI's run, and anything that wants to drive weft
// from Go, use it; it talks only to the bus.
//
// Decisions taken where the design was silent:
//
//   - Submit learns the run id from the trigger's outcome in the dedup
//     bucket (a KV watch on the trigger's key), so a duplicate trigger
//     returns the first run's id and a refused one its errors.
//   - Follow holds back a stage's "finished" transition until every log
//     batch the stage published has been delivered, and returns only after
//     all of the run's output, so a terminal shows a stage's output before
//     its result.
//   - Logs with follow and a stage follows that stage alone (its document
//     in the stages bucket and its log subject) until its document is
//     terminal and the batch its LogSeq names was delivered: the same
//     ending Follow applies to every stage of a run. A finish followed by
//     a retry leaves the document queued, so the follow goes on with the
//     retry.
//   - Readers of logs hold a few MiB of them at most: the ordered
//     consumer buffers 4 MiB (PullMaxBytes, FetchMaxBytes) and eight
//     batches wait for the caller; a slow caller slows the consumer.
package client
