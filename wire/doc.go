// Package wire holds the payloads weft components exchange over NATS: the
// trigger, the stage job, lifecycle events, log batches, the trigger outcome
// and the run document kept in KV. They are JSON on the wire so that the
// nats CLI shows them readably.
//
// The dispatcher, the agents and the CLI meet only through these types and
// the names in package subjects; none of them imports another. wire imports
// pipeline for the stage specification a job carries, and nothing with I/O.
//
// Decisions taken where the design was silent:
//
//   - A job carries everything an agent needs to run the stage (commands,
//     image, the final environment, timeout): agents never read the run
//     document or the pipeline file.
//   - Times are the clock of whoever publishes the event; the run document
//     keeps the agent's start and finish times of a stage.
//   - A finished event carries the stream sequence of the stage's last log
//     batch, so a reader can print a stage's whole output before its result.
//   - Log batches are numbered per attempt (LogBatch.Seq) and their lines
//     carry the time the agent read them; the stream sequence orders them
//     across attempts and stages.
package wire
