package api

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/tokens"
	"github.com/weft-ci/weft/wire"
)

// retryRun runs an ended run again from the stages that did not succeed.
func (a *API) retryRun(w http.ResponseWriter, r *http.Request, who *tokens.Token) {
	run, ok := a.run(w, r)
	if !ok {
		return
	}
	if run.State != wire.RunFailed && run.State != wire.RunCancelled {
		writeError(w, http.StatusConflict, "run %s is %s: only a failed or cancelled run can be retried", run.ID, run.State)
		return
	}
	if err := client.Retry(r.Context(), a.cfg.JS, run.ID); err != nil {
		a.fail(w, r, err)
		return
	}
	a.record(r, who, wire.AuditEntry{Action: "run.retry", Target: run.ID, Count: 1, Detail: "was " + string(run.State)})
	writeJSON(w, http.StatusAccepted, map[string]string{"run_id": run.ID, "status": "retrying", "web_url": a.webURL(run.ID)})
}

// PriorityRequest is the body of POST /api/runs/{id}/priority.
type PriorityRequest struct {
	// Tier is the tier to move the run to.
	Tier string `json:"tier"`
}

// setPriority moves a run that has not ended to another tier.
func (a *API) setPriority(w http.ResponseWriter, r *http.Request, who *tokens.Token) {
	var req PriorityRequest
	if !decodeBody(w, r, &req) {
		return
	}
	tier, err := subjects.ParseTier(req.Tier)
	if err != nil {
		writeError(w, http.StatusBadRequest, "tier: %v", err)
		return
	}
	run, ok := a.run(w, r)
	if !ok {
		return
	}
	if run.State.Terminal() || run.CancelReason != "" {
		writeError(w, http.StatusConflict, "run %s has ended (%s): only a waiting or running run changes tier", run.ID, run.State)
		return
	}
	if err := client.SetPriority(r.Context(), a.cfg.JS, run.ID, tier); err != nil {
		a.fail(w, r, err)
		return
	}
	a.record(r, who, wire.AuditEntry{Action: "run.priority", Target: run.ID, Count: 1, Detail: fmt.Sprintf("%s to %s", cmp.Or(run.Tier, subjects.Normal), tier)})
	writeJSON(w, http.StatusAccepted, map[string]string{"run_id": run.ID, "tier": string(tier), "status": "moving"})
}

// BulkRequest is the body of POST /api/bulk/{action}: the filter (every
// field set must match) and how to proceed.
type BulkRequest struct {
	Repo   string          `json:"repo,omitempty"`
	Branch string          `json:"branch,omitempty"`
	Queue  string          `json:"queue,omitempty"`
	Tier   string          `json:"tier,omitempty"`
	States []wire.RunState `json:"states,omitempty"`
	// OlderThan is a Go duration, e.g. "1h".
	OlderThan string `json:"older_than,omitempty"`
	// Rate bounds the runs acted on a second (default
	// client.DefaultBulkRate).
	Rate float64 `json:"rate,omitempty"`
	// Batch is how many requests go at once (default 10).
	Batch int `json:"batch,omitempty"`
	// DryRun lists the runs selected and changes nothing.
	DryRun bool `json:"dry_run,omitempty"`
	// Reason is recorded with a cancel.
	Reason string `json:"reason,omitempty"`
}

// bulk cancels or requeues the runs a filter selects, at a bounded rate;
// it answers when every request is published.
func (a *API) bulk(w http.ResponseWriter, r *http.Request, who *tokens.Token) {
	var req BulkRequest
	if !decodeBody(w, r, &req) {
		return
	}
	f := client.RunFilter{Repo: req.Repo, Branch: req.Branch, Queue: req.Queue, States: req.States}
	if req.Tier != "" {
		t, err := subjects.ParseTier(req.Tier)
		if err != nil {
			writeError(w, http.StatusBadRequest, "tier: %v", err)
			return
		}
		f.Tier = t
	}
	if req.OlderThan != "" {
		d, err := time.ParseDuration(req.OlderThan)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, "older_than %q: want a duration such as 1h", req.OlderThan)
			return
		}
		f.OlderThan = d
	}
	if req.Rate == 0 {
		req.Rate = client.DefaultBulkRate
	}
	if req.Reason == "" {
		req.Reason = "cancelled in bulk by " + who.Name
	}
	opts := client.BulkOptions{Rate: req.Rate, Batch: req.Batch, DryRun: req.DryRun, Reason: req.Reason}
	res, err := client.Bulk(r.Context(), a.cfg.JS, client.BulkAction(r.PathValue("action")), f, opts)
	if res != nil && res.Done > 0 { // what was done is recorded, if cut short too
		a.record(r, who, client.BulkAudit(res, opts))
	}
	if errors.Is(err, client.ErrBulk) {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
