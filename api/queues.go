package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/tokens"
	"github.com/weft-ci/weft/wire"
)

// keepAlive is how often a log stream that has nothing to send says so,
// so that proxies keep it open.
const keepAlive = 15 * time.Second

// runLogs streams a run's output (one stage's with stage=) as
// Server-Sent Events: an event "line" per line, with its ordinal as the
// event id, then an event "end" with the run's state. With follow=true it
// goes on until the run (or the stage) ended and all of its output
// arrived. A client that reconnects with Last-Event-ID (or last_event_id=)
// gets the lines after that one.
func (a *API) runLogs(w http.ResponseWriter, r *http.Request, _ *tokens.Token) {
	run, ok := a.run(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	stage := q.Get("stage")
	if stage != "" && run.Stage(stage) == nil {
		writeError(w, http.StatusNotFound, "run %s has no stage %q", run.ID, stage)
		return
	}
	follow := q.Get("follow") == "true"
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = q.Get("last_event_id")
	}
	skip := 0
	if last != "" {
		n, err := strconv.Atoi(last)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "Last-Event-ID %q: want the id of a line event", last)
			return
		}
		skip = n
	}
	flusher, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "this connection cannot stream")
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	flusher.Flush()

	var mu sync.Mutex // guards w between the lines and the keep-alives
	send := func(id, event string, v any) {
		data, _ := json.Marshal(v)
		mu.Lock()
		defer mu.Unlock()
		if id != "" {
			fmt.Fprintf(w, "id: %s\n", id)
		}
		fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data)
		flusher.Flush()
	}
	ctx := r.Context()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(keepAlive)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				mu.Lock()
				fmt.Fprint(w, ": keep-alive\n\n")
				flusher.Flush()
				mu.Unlock()
			}
		}
	})
	n := 0
	err := client.Logs(ctx, a.cfg.JS, run.ID, stage, follow, func(l client.Line) {
		n++
		if n > skip {
			send(strconv.Itoa(n), "line", l)
		}
	})
	close(done)
	wg.Wait()
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		send("", "error", Error{Error: err.Error()})
		return
	}
	end := map[string]any{"run_id": run.ID, "lines": n}
	if final, err := client.Get(ctx, a.cfg.JS, run.ID); err == nil {
		end["state"] = final.State
		if stage != "" {
			end["stage_state"] = final.Stage(stage).State
		}
	}
	send("", "end", end)
}

// Queue is one queue's depth and whether it is paused.
type Queue struct {
	client.QueueDepth
	Paused       bool   `json:"paused"`
	PausedReason string `json:"paused_reason,omitempty"`
}

// WaitingStage is a queued stage no agent has started, and why.
type WaitingStage struct {
	RunID  string        `json:"run_id"`
	Stage  string        `json:"stage"`
	Queue  string        `json:"queue"`
	Tier   subjects.Tier `json:"tier"`
	Reason string        `json:"reason,omitempty"`
	Detail string        `json:"detail,omitempty"`
	// WaitedSeconds is how long it has waited.
	WaitedSeconds float64 `json:"waited_seconds"`
}

// WaitingRun is a run waiting for admission, and why.
type WaitingRun struct {
	RunID         string        `json:"run_id"`
	Repo          string        `json:"repo,omitempty"`
	Pipeline      string        `json:"pipeline"`
	Branch        string        `json:"branch,omitempty"`
	Tier          subjects.Tier `json:"tier"`
	Reason        string        `json:"reason,omitempty"`
	Detail        string        `json:"detail,omitempty"`
	WaitedSeconds float64       `json:"waited_seconds"`
}

// Queues is the answer of GET /api/queues.
type Queues struct {
	Queues []Queue        `json:"queues"`
	Stages []WaitingStage `json:"waiting_stages"`
	Runs   []WaitingRun   `json:"waiting_runs"`
	Intake IntakeState    `json:"intake"`
}

// IntakeState says whether the dispatchers take triggers.
type IntakeState struct {
	Paused  bool   `json:"paused"`
	Waiting uint64 `json:"waiting"`
}

func (a *API) queues(w http.ResponseWriter, r *http.Request, _ *tokens.Token) {
	ctx := r.Context()
	depths, err := client.QueueDepths(ctx, a.cfg.JS)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	st, err := client.GetStatus(ctx, a.cfg.JS)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	out := Queues{Queues: []Queue{}, Stages: []WaitingStage{}, Runs: []WaitingRun{}}
	seen := map[string]bool{}
	for _, d := range depths {
		reason, paused := st.Paused[d.Queue]
		out.Queues = append(out.Queues, Queue{QueueDepth: d, Paused: paused, PausedReason: reason})
		seen[d.Queue] = true
	}
	for q, reason := range st.Paused {
		if !seen[q] {
			out.Queues = append(out.Queues, Queue{QueueDepth: client.QueueDepth{Queue: q, Tiers: []client.TierDepth{}}, Paused: true, PausedReason: reason})
		}
	}
	for _, rs := range st.Runs {
		if rs.Reason != "" {
			out.Runs = append(out.Runs, WaitingRun{RunID: rs.ID, Repo: rs.Repo, Pipeline: rs.Pipeline, Branch: rs.Branch, Tier: rs.Tier, Reason: rs.Reason, Detail: rs.Detail, WaitedSeconds: rs.Waited.Seconds()})
		}
		for _, s := range rs.Stages {
			if s.State == wire.StageQueued {
				out.Stages = append(out.Stages, WaitingStage{RunID: rs.ID, Stage: s.Key, Queue: s.Queue, Tier: s.Tier, Reason: s.Reason, Detail: s.Detail, WaitedSeconds: s.Waited.Seconds()})
			}
		}
	}
	if paused, waiting, err := client.Intake(ctx, a.cfg.JS); err == nil {
		out.Intake = IntakeState{Paused: paused, Waiting: waiting}
	}
	writeJSON(w, http.StatusOK, out)
}

// PauseRequest is the body of POST /api/queues/{queue}/pause.
type PauseRequest struct {
	Reason string `json:"reason,omitempty"`
}

func (a *API) pauseQueue(w http.ResponseWriter, r *http.Request, who *tokens.Token) {
	var req PauseRequest
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Reason == "" {
		req.Reason = "paused by " + who.Name
	}
	queue := r.PathValue("queue")
	err := client.PauseQueue(r.Context(), a.cfg.JS, queue, req.Reason)
	a.queueChanged(w, r, who, wire.AuditEntry{Action: "queue.pause", Target: queue, Count: 1, Detail: req.Reason}, "paused", err)
}

func (a *API) resumeQueue(w http.ResponseWriter, r *http.Request, who *tokens.Token) {
	queue := r.PathValue("queue")
	err := client.ResumeQueue(r.Context(), a.cfg.JS, queue)
	a.queueChanged(w, r, who, wire.AuditEntry{Action: "queue.resume", Target: queue, Count: 1}, "resumed", err)
}

// queueChanged answers a pause or resume of the queue e.Target that
// ended with err, recording e in the audit stream when it succeeded.
func (a *API) queueChanged(w http.ResponseWriter, r *http.Request, who *tokens.Token, e wire.AuditEntry, status string, err error) {
	if errors.Is(err, subjects.ErrInvalidName) {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.record(r, who, e)
	writeJSON(w, http.StatusOK, map[string]string{"queue": e.Target, "status": status})
}

func (a *API) agents(w http.ResponseWriter, r *http.Request, _ *tokens.Token) {
	agents, err := client.Agents(r.Context(), a.cfg.JS)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if agents == nil {
		agents = []wire.Agent{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"agents": agents})
}

func (a *API) drainAgent(w http.ResponseWriter, r *http.Request, who *tokens.Token) {
	id := r.PathValue("id")
	reply, err := client.DrainAgent(r.Context(), a.cfg.JS.Conn(), id)
	if errors.Is(err, client.ErrNoAgent) {
		writeError(w, http.StatusNotFound, "no agent %q answered", id)
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.record(r, who, wire.AuditEntry{Action: "agent.drain", Target: id, Count: 1, Detail: fmt.Sprintf("%d stages running", len(reply.Running))})
	writeJSON(w, http.StatusAccepted, reply)
}
