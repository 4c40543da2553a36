// Package subjects is weft's wire vocabulary: every NATS subject, JetStream
// stream, consumer, KV bucket and object bucket name, with the configuration
// each is created with, and the tier and queue vocabulary.
//
// It imports nothing of weft's and no NATS package: configurations are plain
// values that the bus package turns into JetStream API calls. Anything that
// wants to address the bus takes its names from here, so the wire contract
// lives in one place and can be inspected with the nats CLI.
//
// Decisions taken where the design was silent:
//
//   - Queue names are [a-z0-9][a-z0-9_-]{0,62}: they become one subject token
//     and part of a consumer name, so dots, wildcards and upper case are out.
//   - Job messages are republished, headers only, to weft.wake.<queue>.<tier>
//     after they are stored. Agents wake on that subject rather than on the
//     job subjects themselves, so a wake-up never arrives before the job can
//     be fetched.
//   - Run-level events (a cancel request, the run finishing) are published on
//     weft.events.<run>, one token shorter than stage events, so they can
//     never collide with a stage key.
//   - Cancel notices for running stages are core NATS messages on
//     weft.cancel.<run>: they only matter to an agent that is alive to hear
//     them, and the run document in KV stays the record.
package subjects
