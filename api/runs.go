package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/gitsrc"
	"github.com/weft-ci/weft/objectstore"
	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/tokens"
	"github.com/weft-ci/weft/wire"
)

// Pipeline is a registered pipeline: a repository's settings as the API
// shows them, without its secrets.
type Pipeline struct {
	// ID names it in the API's paths: the repository, owner/name.
	ID            string `json:"id"`
	CloneURL      string `json:"clone_url"`
	File          string `json:"file"`
	DefaultBranch string `json:"default_branch"`
	// Webhook says whether it takes GitHub deliveries (it has a secret).
	Webhook bool `json:"webhook"`
}

func (a *API) listPipelines(w http.ResponseWriter, r *http.Request, _ *tokens.Token) {
	all, err := a.cfg.Repos.List(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := []Pipeline{}
	for _, rp := range all {
		out = append(out, pipelineOf(rp))
	}
	writeJSON(w, http.StatusOK, map[string]any{"pipelines": out})
}

func pipelineOf(rp *repos.Repo) Pipeline {
	branch := rp.DefaultBranch
	if branch == "" {
		branch = repos.DefaultBranch
	}
	file := rp.Pipeline
	if file == "" {
		file = repos.DefaultPipeline
	}
	return Pipeline{ID: rp.Name, CloneURL: rp.CloneURL, File: file, DefaultBranch: branch, Webhook: rp.Secret != ""}
}

// TriggerRequest is the body of POST /api/pipelines/{id}/runs; every
// field may be left out.
type TriggerRequest struct {
	// Branch is what the run builds; default the pipeline's default
	// branch.
	Branch string `json:"branch,omitempty"`
	// Commit is the commit it builds; default the branch's head now.
	Commit string `json:"commit,omitempty"`
	// Variables are the run's own variables.
	Variables map[string]string `json:"variables,omitempty"`
	// Priority overrides the rule's: critical, high, normal or low.
	Priority string `json:"priority,omitempty"`
}

// TriggerResponse answers a trigger: the run it started or, for a
// duplicate, the first run of that trigger.
type TriggerResponse struct {
	RunID     string `json:"run_id"`
	WebURL    string `json:"web_url"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// triggerRun starts a run of a registered pipeline: the pipeline file is
// read from the commit (the branch's head when none is given) and checked
// here, so that a bad file is answered with its problems and nothing is
// published; then the trigger goes to the dispatchers, and the answer
// waits for their decision.
func (a *API) triggerRun(w http.ResponseWriter, r *http.Request, _ *tokens.Token) {
	ctx, cancel := context.WithTimeout(r.Context(), a.cfg.SubmitTimeout)
	defer cancel()
	id := r.PathValue("id")
	rp, err := a.cfg.Repos.Get(ctx, id)
	if errors.Is(err, repos.ErrNotFound) {
		writeError(w, http.StatusNotFound, "no pipeline %q: weft repo add registers one", id)
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var req TriggerRequest
	if !decodeBody(w, r, &req) {
		return
	}
	p := pipelineOf(rp)
	if req.Branch == "" {
		req.Branch = p.DefaultBranch
	}
	var tier subjects.Tier
	if req.Priority != "" {
		if tier, err = subjects.ParseTier(req.Priority); err != nil {
			writeError(w, http.StatusBadRequest, "priority: %v", err)
			return
		}
	}
	if req.Commit == "" {
		if req.Commit, err = gitsrc.Resolve(ctx, rp.CloneURL, rp.Token, req.Branch); errors.Is(err, gitsrc.ErrNoRef) {
			writeError(w, http.StatusBadRequest, "branch: %v", err)
			return
		} else if err != nil {
			a.fail(w, r, err)
			return
		}
	}
	text, err := a.cfg.Git.ReadFile(ctx, rp.CloneURL, rp.Token, req.Commit, p.File)
	if errors.Is(err, gitsrc.ErrBadCommit) || errors.Is(err, gitsrc.ErrNoFile) {
		writeError(w, http.StatusBadRequest, "commit: %v", err)
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if _, err := pipeline.Parse(p.File, text); err != nil {
		invalid(w, err)
		return
	}
	kind := repos.KindBranch
	if req.Branch == p.DefaultBranch {
		kind = repos.KindDefaultBranch
	}
	rule := rp.Rule(kind)
	if tier == "" {
		tier = rule.Priority
	}
	t := wire.Trigger{
		Repo: rp.Name, File: p.File, Pipeline: string(text), Branch: req.Branch, Commit: req.Commit,
		CloneURL: rp.CloneURL, Variables: req.Variables, Priority: tier, Queue: rule.Queue,
	}
	t.ID = client.TriggerID(t)
	if key := r.Header.Get("Idempotency-Key"); key != "" {
		if len(key) > 200 {
			writeError(w, http.StatusBadRequest, "Idempotency-Key: over 200 characters")
			return
		}
		t.ID = "api-" + key
	}
	first, err := a.firstRun(ctx, t.ID)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	runID, err := client.Submit(ctx, a.cfg.JS, t)
	var refused *client.RefusedError
	switch {
	case errors.As(err, &refused):
		a.refused(w, r, refused, rp)
		return
	case err != nil:
		a.fail(w, r, err)
		return
	}
	code := http.StatusCreated
	if first == runID {
		code = http.StatusOK
	}
	w.Header().Set("Location", "/api/runs/"+runID)
	writeJSON(w, code, TriggerResponse{RunID: runID, WebURL: a.webURL(runID), Duplicate: code == http.StatusOK})
}

// firstRun returns the run a trigger id started already, or "".
func (a *API) firstRun(ctx context.Context, triggerID string) (string, error) {
	dedup, err := bus.KeyValue(ctx, a.cfg.JS, subjects.DedupBucket)
	if err != nil {
		return "", err
	}
	e, err := dedup.Get(ctx, subjects.DedupKey(triggerID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("trigger outcome %s: %w", triggerID, err)
	}
	var out wire.Outcome
	_ = json.Unmarshal(e.Value(), &out)
	return out.RunID, nil
}

// invalid answers 400 with a pipeline's problems, one FILE:LINE:COL each.
func invalid(w http.ResponseWriter, err error) {
	var list []string
	var perrs pipeline.Errors
	if errors.As(err, &perrs) {
		for _, e := range perrs {
			list = append(list, e.Error())
		}
	} else {
		list = strings.Split(err.Error(), "\n")
	}
	writeJSON(w, http.StatusBadRequest, Error{Error: "invalid pipeline: " + list[0], Errors: list})
}

// refused answers a dispatcher's refusal: 400 for an invalid trigger, 429
// with Retry-After, the reason and the jobs waiting in every queue for
// a capacity refusal, 503 for a trigger given up on.
func (a *API) refused(w http.ResponseWriter, r *http.Request, e *client.RefusedError, rp *repos.Repo) {
	switch e.Reason {
	case wire.RefusedInvalid:
		invalid(w, errors.New(e.Message))
	case wire.RefusedWIP, wire.RefusedBackpressure:
		secs := int((e.RetryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		depth := 0
		if qs, err := client.QueueDepths(r.Context(), a.cfg.JS); err == nil {
			for _, q := range qs {
				depth += int(q.Waiting)
			}
		}
		writeJSON(w, http.StatusTooManyRequests, Error{Error: e.Message, Reason: e.Reason, RetryAfterSeconds: secs, QueueDepth: &depth})
	default:
		writeJSON(w, http.StatusServiceUnavailable, Error{Error: e.Message, Reason: e.Reason})
	}
	a.log.Info().Str("repo", rp.Name).Str("reason", e.Reason).Msg("trigger refused")
}

func (a *API) webURL(runID string) string { return a.cfg.BaseURL + "/runs/" + runID }

// RunSummary is one run of a list.
type RunSummary struct {
	ID       string        `json:"id"`
	Repo     string        `json:"repo,omitempty"`
	Pipeline string        `json:"pipeline"`
	Branch   string        `json:"branch,omitempty"`
	Commit   string        `json:"commit,omitempty"`
	State    wire.RunState `json:"state"`
	Tier     subjects.Tier `json:"tier"`
	Created  time.Time     `json:"created"`
	Finished *time.Time    `json:"finished,omitempty"`
	WebURL   string        `json:"web_url"`
}

// RunList is a page of runs, newest first; Next, when set, is the cursor
// of the next page.
type RunList struct {
	Runs []RunSummary `json:"runs"`
	Next string       `json:"next,omitempty"`
}

// listRuns lists runs newest first, filtered by repo, state and branch, a
// page at a time (limit, default 50, at most 500; cursor: the Next of the
// previous page). It reads every run document once (client.SelectRuns).
func (a *API) listRuns(w http.ResponseWriter, r *http.Request, _ *tokens.Token) {
	q := r.URL.Query()
	limit := 50
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 500 {
			writeError(w, http.StatusBadRequest, "limit %q: want 1 to 500", s)
			return
		}
		limit = n
	}
	state := wire.RunState(q.Get("state"))
	if state != "" && !slices.Contains([]wire.RunState{wire.RunQueued, wire.RunRunning, wire.RunSucceeded, wire.RunFailed, wire.RunCancelled}, state) {
		writeError(w, http.StatusBadRequest, "state %q: want queued, running, succeeded, failed or cancelled", state)
		return
	}
	f := client.RunFilter{Repo: q.Get("repo"), Branch: q.Get("branch")}
	if state != "" {
		f.States = []wire.RunState{state}
	}
	cursor := q.Get("cursor")
	runs, err := client.SelectRuns(r.Context(), a.cfg.JS, f, a.cfg.Now())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var all []RunSummary // newest first, after the cursor
	for _, h := range slices.Backward(runs) {
		if cursor == "" || h.ID < cursor {
			all = append(all, a.summary(h))
		}
	}
	out := RunList{Runs: all}
	if len(all) > limit {
		out.Runs, out.Next = all[:limit], all[limit-1].ID
	}
	if out.Runs == nil {
		out.Runs = []RunSummary{}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *API) summary(h *wire.Run) RunSummary {
	s := RunSummary{ID: h.ID, Repo: h.Repo, Pipeline: h.PipelineName, Branch: h.Branch, Commit: h.Commit, State: h.State, Tier: h.Tier, Created: h.Created, WebURL: a.webURL(h.ID)}
	if !h.Finished.IsZero() {
		f := h.Finished
		s.Finished = &f
	}
	return s
}

// RunDetail is one run whole: its document, its stages and the web URL.
type RunDetail struct {
	*wire.Run
	WebURL string `json:"web_url"`
}

func (a *API) getRun(w http.ResponseWriter, r *http.Request, _ *tokens.Token) {
	run, ok := a.run(w, r)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, RunDetail{Run: run, WebURL: a.webURL(run.ID)})
}

// run reads the run of the path's id, answering 404 when there is none.
func (a *API) run(w http.ResponseWriter, r *http.Request) (*wire.Run, bool) {
	id := r.PathValue("id")
	run, err := client.Get(r.Context(), a.cfg.JS, id)
	if errors.Is(err, runstore.ErrNoRun) || errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		writeError(w, http.StatusNotFound, "no run %q", id)
		return nil, false
	}
	if err != nil {
		a.fail(w, r, err)
		return nil, false
	}
	return run, true
}

// CancelRequest is the body of POST /api/runs/{id}/cancel.
type CancelRequest struct {
	// Stage, when set, cancels that stage alone.
	Stage string `json:"stage,omitempty"`
	// Reason is recorded with the cancel.
	Reason string `json:"reason,omitempty"`
}

func (a *API) cancelRun(w http.ResponseWriter, r *http.Request, who *tokens.Token) {
	var req CancelRequest
	if !decodeBody(w, r, &req) {
		return
	}
	run, ok := a.run(w, r)
	if !ok {
		return
	}
	if req.Reason == "" {
		req.Reason = "cancelled by " + who.Name
	}
	if req.Stage != "" && run.Stage(req.Stage) == nil {
		writeError(w, http.StatusNotFound, "run %s has no stage %q", run.ID, req.Stage)
		return
	}
	if run.State.Terminal() {
		writeError(w, http.StatusConflict, "run %s is %s already", run.ID, run.State)
		return
	}
	var err error
	if req.Stage != "" {
		err = client.CancelStage(r.Context(), a.cfg.JS, run.ID, req.Stage, req.Reason)
	} else {
		err = client.Cancel(r.Context(), a.cfg.JS, run.ID, req.Reason)
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if req.Stage != "" {
		a.record(r, who, wire.AuditEntry{Action: "stage.cancel", Target: run.ID + "/" + req.Stage, Count: 1, Detail: req.Reason})
	} else {
		a.record(r, who, wire.AuditEntry{Action: "run.cancel", Target: run.ID, Count: 1, Detail: req.Reason})
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"run_id": run.ID, "status": "cancelling"})
}

// Artifact is one artifact of a run with a signed download URL, valid
// for an hour.
type Artifact struct {
	client.ArtifactInfo
	URL string `json:"url"`
}

func (a *API) runArtifacts(w http.ResponseWriter, r *http.Request, _ *tokens.Token) {
	run, ok := a.run(w, r)
	if !ok {
		return
	}
	arts, err := client.Artifacts(r.Context(), a.cfg.JS, run.ID)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := []Artifact{}
	if len(arts) > 0 {
		keys, err := objectstore.OpenKeys(r.Context(), a.cfg.JS)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		key, err := keys.Current(r.Context())
		if err != nil {
			a.fail(w, r, err)
			return
		}
		for _, ai := range arts {
			u, err := objectstore.SignURL(key, a.cfg.BaseURL, objectstore.Artifact{Run: run.ID, Stage: ai.Stage, Path: ai.Path, Size: ai.Size, SHA256: ai.SHA256, Stored: ai.Stored}, a.cfg.Now().Add(time.Hour))
			if err != nil {
				a.fail(w, r, err)
				return
			}
			out = append(out, Artifact{ArtifactInfo: ai, URL: u})
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"artifacts": out})
}
