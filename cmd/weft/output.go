package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/wire"
)

// printer writes a followed run to stdout, as text or JSON lines.
type printer struct {
	w     io.Writer
	json  bool
	width int // longest stage key, for alignment
	enc   *json.Encoder
}

func newPrinter(w io.Writer, asJSON bool, p *pipeline.Pipeline) *printer {
	width := 0
	for _, s := range p.Stages {
		width = max(width, len(s.Key))
	}
	return &printer{w: w, json: asJSON, width: width, enc: json.NewEncoder(w)}
}

// jsonEvent is one line of --json output.
type jsonEvent struct {
	Type  string         `json:"type"` // run_started, stage, log, run
	RunID string         `json:"run_id"`
	Stage *wire.StageRun `json:"stage,omitempty"`
	Log   *client.Line   `json:"log,omitempty"`
	Run   *wire.Run      `json:"run,omitempty"`
}

func (p *printer) start(runID string) {
	if p.json {
		_ = p.enc.Encode(jsonEvent{Type: "run_started", RunID: runID})
		return
	}
	fmt.Fprintf(p.w, "weft: run %s\n", runID)
}

func (p *printer) update(u client.Update) {
	if p.json {
		ev := jsonEvent{RunID: u.Run.ID}
		switch {
		case u.Stage != nil:
			ev.Type, ev.Stage = "stage", u.Stage
		case u.Line != nil:
			ev.Type, ev.Log = "log", u.Line
		case u.Done:
			ev.Type, ev.Run = "run", u.Run
		}
		_ = p.enc.Encode(ev)
		return
	}
	switch {
	case u.Line != nil:
		fmt.Fprintf(p.w, "%-*s | %s\n", p.width, u.Line.Stage, u.Line.Text)
	case u.Stage != nil && u.Stage.State == wire.StagePending:
	case u.Stage != nil:
		fmt.Fprintf(p.w, "%-*s * %s\n", p.width, u.Stage.Key, stageStatus(u.Run, u.Stage))
	case u.Done:
		p.summary(u.Run)
	}
}

func stageStatus(r *wire.Run, s *wire.StageRun) string {
	switch s.State {
	case wire.StageQueued:
		if s.Attempt > 1 {
			return fmt.Sprintf("queued for attempt %d on %s (%s)", s.Attempt, s.Queue, r.Tier)
		}
		return fmt.Sprintf("queued on %s (%s)", s.Queue, r.Tier)
	case wire.StageRunning:
		return fmt.Sprintf("started (attempt %d)", s.Attempt)
	case wire.StageSucceeded:
		return fmt.Sprintf("succeeded in %s (exit 0)", duration(s))
	case wire.StageFailed:
		return fmt.Sprintf("failed in %s (exit %d, %s): %s", duration(s), s.ExitCode, s.Category, s.Message)
	case wire.StageSkipped, wire.StageCancelled:
		if s.Message != "" {
			return fmt.Sprintf("%s: %s", s.State, s.Message)
		}
	}
	return string(s.State)
}

func duration(s *wire.StageRun) string {
	if s.Started.IsZero() || s.Finished.IsZero() {
		return "-"
	}
	return s.Finished.Sub(s.Started).Round(time.Millisecond).String()
}

func (p *printer) summary(r *wire.Run) {
	total := "-"
	if !r.Finished.IsZero() {
		total = r.Finished.Sub(r.Created).Round(time.Millisecond).String()
	}
	fmt.Fprintf(p.w, "\nweft: run %s %s in %s\n", r.ID, strings.ToUpper(string(r.State)), total)
	for _, s := range r.Stages {
		extra := ""
		if s.State == wire.StageFailed {
			extra = fmt.Sprintf("exit %d, %s", s.ExitCode, s.Category)
		}
		fmt.Fprintf(p.w, "  %-*s  %-9s  %8s  %s\n", p.width, s.Key, s.State, duration(&s), extra)
	}
}
