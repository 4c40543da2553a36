package api

import (
	"cmp"
	"errors"
	"net/http"
	"strconv"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/tokens"
	"github.com/weft-ci/weft/wire"
)

// maxAuditLimit bounds the limit of GET /api/audit.
const maxAuditLimit = 1000

// AuditList is the answer of GET /api/audit: the entries selected,
// oldest first.
type AuditList struct {
	Entries []wire.AuditEntry `json:"entries"`
}

// audit lists the audit stream's entries (client.AuditLog): since= a
// duration back from now or an RFC 3339 time, action= one action or a
// prefix ending in a dot, actor= one actor, limit= the newest this many
// (default client.DefaultAuditLimit, at most maxAuditLimit).
func (a *API) audit(w http.ResponseWriter, r *http.Request, _ *tokens.Token) {
	q := r.URL.Query()
	query := client.AuditQuery{Action: q.Get("action"), Actor: q.Get("actor"), Limit: client.DefaultAuditLimit}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxAuditLimit {
			writeError(w, http.StatusBadRequest, "limit %q: want 1 to %d", s, maxAuditLimit)
			return
		}
		query.Limit = n
	}
	if s := q.Get("since"); s != "" {
		t, err := client.ParseSince(s, a.cfg.Now())
		if err != nil {
			writeError(w, http.StatusBadRequest, "%v", err)
			return
		}
		query.Since = t
	}
	entries, err := client.AuditLog(r.Context(), a.cfg.JS, query)
	if errors.Is(err, client.ErrInvalidAudit) {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if entries == nil {
		entries = []wire.AuditEntry{}
	}
	writeJSON(w, http.StatusOK, AuditList{Entries: entries})
}

// record records e, an operator action the API did for who, in the
// audit stream, with who's name as the actor. The action is done, so it
// records even when the request has ended (client.RecordDone), and a
// failure is logged as a warning, not answered.
func (a *API) record(r *http.Request, who *tokens.Token, e wire.AuditEntry) {
	e.Via = wire.AuditViaAPI
	if who != nil {
		e.Actor = who.Name
	}
	e.Actor = cmp.Or(e.Actor, "unknown")
	if e.Time.IsZero() {
		e.Time = a.cfg.Now().UTC()
	}
	if err := client.RecordDone(r.Context(), a.cfg.JS, e); err != nil {
		a.log.Warn().Err(err).Str("action", e.Action).Str("actor", e.Actor).Msg("action done but not recorded in the audit stream")
	}
}
