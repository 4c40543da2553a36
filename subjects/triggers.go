package subjects

import (
	"strconv"
	"strings"
	"time"
)

// Deliveries of the triggers consumer. A trigger whose handling fails is
// handed back with a delay (NakWithDelay) that doubles from
// TriggerFirstRetry; after TriggerMaxDeliver deliveries it is given up:
// its outcome is recorded as refused with the last error and it is copied
// to DLQStream. A trigger that can never succeed (malformed, too large) is
// given up on its first delivery.
//
// The delays are not the consumer's BackOff: JetStream uses BackOff[0] as
// the AckWait and counts a nak's delay from it, so a BackOff would both
// shorten the time a dispatcher has to handle a trigger and stretch the
// delays.
const (
	// TriggerMaxDeliver bounds the deliveries of one trigger.
	TriggerMaxDeliver = 5
	// TriggerFirstRetry is the delay before the second delivery of a
	// trigger whose first delivery failed; each later one doubles it
	// (1 s, 2 s, 4 s, 8 s: a trigger is given up about 15 s after it
	// first failed).
	TriggerFirstRetry = time.Second
)

// TriggerRetryDelay returns how long a trigger whose delivery number
// delivered (counting from 1) failed waits before it is delivered again.
func TriggerRetryDelay(delivered uint64) time.Duration {
	d := TriggerFirstRetry
	for i := uint64(1); i < delivered && i < TriggerMaxDeliver; i++ {
		d *= 2
	}
	return d
}

// triggerDLQPrefix starts the subjects of dead triggers in DLQStream. A
// dead trigger's subject has two tokens after weft.dlq, a dead job's one
// (DLQ), so a filter on either never matches the other, whatever a queue
// is called.
const triggerDLQPrefix = dlqPrefix + ".triggers"

// AllTriggerDLQ matches the dead triggers in DLQStream, of every
// repository: weft.dlq.triggers.<repo>.
const AllTriggerDLQ = triggerDLQPrefix + ".>"

// AllJobDLQ matches the dead jobs in DLQStream, of every queue:
// weft.dlq.<queue>. It does not match dead triggers.
const AllJobDLQ = dlqPrefix + ".*"

// TriggerDLQ returns the subject a dead trigger published on subject
// (weft.triggers.<repo>, see Trigger) is kept on in DLQStream:
// weft.dlq.triggers.<repo>.
func TriggerDLQ(subject string) string {
	return triggerDLQPrefix + strings.TrimPrefix(subject, triggersPrefix)
}

// TriggerDLQMsgID returns the Nats-Msg-Id of the copy in DLQStream of the
// trigger stored at seq in TriggersStream.
func TriggerDLQMsgID(seq uint64) string {
	return "dlq.trigger." + strconv.FormatUint(seq, 10)
}

// Headers of a dead trigger's copy in the DLQ, besides HeaderSubject (the
// trigger subject it was on) and HeaderDeliveries.
const (
	// HeaderTrigger is the trigger's id; absent when it could not be read.
	HeaderTrigger = "Weft-Trigger"
	// HeaderError says why the trigger was given up: the error of its
	// last delivery, on one line.
	HeaderError = "Weft-Error"
)

// IsTriggerDLQ reports whether a subject of DLQStream holds a dead
// trigger (see TriggerDLQ) rather than a dead job.
func IsTriggerDLQ(subject string) bool { return strings.HasPrefix(subject, triggerDLQPrefix+".") }
