package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// ErrInvalidAudit is wrapped by the errors of Record for an entry it
// cannot record, and of AuditLog for a query it cannot ask. A bad action
// also wraps subjects.ErrInvalidName.
var ErrInvalidAudit = errors.New("client: invalid audit entry or query")

// DefaultAuditLimit is how many entries AuditLog returns for a query
// that sets no Limit.
const DefaultAuditLimit = 100

// Record appends e to the audit stream, on subjects.Audit(e.Action) with
// Nats-Msg-Id e.ID, so recording the same entry twice keeps one. It sets
// e.ID to a new ULID when empty and e.Time to now when zero. An action
// that subjects.ValidateAuditAction refuses, or an empty Actor, is an
// error wrapping ErrInvalidAudit, and nothing is published.
func Record(ctx context.Context, js jetstream.JetStream, e wire.AuditEntry) error {
	if err := subjects.ValidateAuditAction(e.Action); err != nil {
		return fmt.Errorf("record audit entry: %w: %w", ErrInvalidAudit, err)
	}
	if e.Actor == "" {
		return fmt.Errorf("record audit entry %s: %w: no actor", e.Action, ErrInvalidAudit)
	}
	if e.ID == "" {
		e.ID = ulid.Make().String()
	}
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	data, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("record audit entry %s: %w", e.Action, err)
	}
	if _, err := js.Publish(ctx, subjects.Audit(e.Action), data, jetstream.WithMsgID(e.ID)); err != nil {
		return fmt.Errorf("record audit entry %s: %w", e.Action, err)
	}
	return nil
}

// RecordDoneTimeout bounds RecordDone.
const RecordDoneTimeout = 10 * time.Second

// RecordDone records e, an action already done, with Record on a
// context of its own: detached from ctx's end (the request or command
// that did it may be ending) and bounded by RecordDoneTimeout.
func RecordDone(ctx context.Context, js jetstream.JetStream, e wire.AuditEntry) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), RecordDoneTimeout)
	defer cancel()
	return Record(ctx, js, e)
}

// AuditQuery selects audit entries; zero fields select everything.
type AuditQuery struct {
	// Since selects the entries stored at or after it; zero is from the
	// first one the stream keeps.
	Since time.Time
	// Action selects one action exactly (runs.cancel), or, ending in a
	// dot (runs.), every action that starts with it.
	Action string
	// Actor selects one actor's entries, exactly.
	Actor string
	// Limit keeps the newest Limit entries of those selected; 0 is
	// DefaultAuditLimit.
	Limit int
}

// AuditLog returns the entries of the audit stream that q selects,
// oldest first. It reads them (bus.ReadPending) filtered on the action's
// subjects, from q.Since (DeliverByStartTime) when set, else from the
// first entry, and keeps the newest q.Limit: a query over a
// long stretch reads every entry of it, so bound it with Since. A bad
// action or a negative limit is an error wrapping ErrInvalidAudit.
func AuditLog(ctx context.Context, js jetstream.JetStream, q AuditQuery) ([]wire.AuditEntry, error) {
	filter, err := subjects.AuditFilter(q.Action)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w: %w", ErrInvalidAudit, err)
	}
	limit := q.Limit
	if limit < 0 {
		return nil, fmt.Errorf("audit log: %w: limit %d: want 0 (the default, %d) or more", ErrInvalidAudit, limit, DefaultAuditLimit)
	}
	if limit == 0 {
		limit = DefaultAuditLimit
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}}
	if !q.Since.IsZero() {
		since := q.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	}
	var out []wire.AuditEntry
	err = bus.ReadPending(ctx, js, subjects.AuditStream, cfg, func(m jetstream.Msg) error {
		var e wire.AuditEntry
		if json.Unmarshal(m.Data(), &e) != nil || (q.Actor != "" && e.Actor != q.Actor) {
			return nil
		}
		if out = append(out, e); len(out) >= 2*limit {
			out = append(out[:0], out[len(out)-limit:]...)
		}
		return nil
	})
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("audit log: no stream %s (no weft server or dispatcher of this version has provisioned it): %w", subjects.AuditStream, err)
	}
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	if len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out, nil
}

// ParseSince reads the start of an audit query relative to now: a
// duration back from now (90m, 24h, or whole days such as 7d) or an
// RFC 3339 time. Anything else, or a negative duration, is an error
// wrapping ErrInvalidAudit.
func ParseSince(s string, now time.Time) (time.Time, error) {
	d, err := time.ParseDuration(s)
	if days, ok := strings.CutSuffix(s, "d"); ok && err != nil {
		if n, nerr := strconv.Atoi(days); nerr == nil && n <= maxSinceDays {
			d, err = time.Duration(n)*24*time.Hour, nil
		}
	}
	if err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%w: since %q: a duration back from now is not negative", ErrInvalidAudit, s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%w: since %q: want a duration back from now (90m, 24h, 7d) or an RFC 3339 time (2026-01-02T15:04:05Z)", ErrInvalidAudit, s)
}

// maxSinceDays bounds a since of whole days, far beyond any retention,
// so that the duration cannot overflow.
const maxSinceDays = 100 * 365
