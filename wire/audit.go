package wire

import "time"

// AuditEntry is one operator action, as the audit stream keeps it: one
// message on subjects.Audit(Action), with Nats-Msg-Id set to ID.
type AuditEntry struct {
	// ID is a ULID naming the entry; client.Record sets it when empty.
	ID string `json:"id"`
	// Time is when the action was done; client.Record sets it when zero.
	Time time.Time `json:"time"`
	// Actor is who: an API token's name, or the CLI user (the name in
	// its credentials, else user@host).
	Actor string `json:"actor"`
	// Via is how: AuditViaCLI or AuditViaAPI.
	Via string `json:"via"`
	// Action is what, dotted (subjects.ValidateAuditAction):
	// intake.pause, queue.pause, runs.cancel, runs.requeue,
	// run.priority, run.retry, agent.drain, dlq.replay, ...
	Action string `json:"action"`
	// Target is what it acted on when that is one thing: a run id, a
	// queue, an agent id.
	Target string `json:"target,omitempty"`
	// Filter is a bulk action's filter, name to value.
	Filter map[string]string `json:"filter,omitempty"`
	// Count is how many things it acted on (for intake.pause and
	// intake.resume, the triggers waiting).
	Count int `json:"count"`
	// Detail is anything else: a reason, a new tier, a rate.
	Detail string `json:"detail,omitempty"`
}

// The ways an operator acts (AuditEntry.Via).
const (
	AuditViaCLI = "cli"
	AuditViaAPI = "api"
)
