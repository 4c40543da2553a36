package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/oklog/ulid/v2"

	"github.com/weft-ci/weft/wire"
)

// This file holds the run workspaces under Config.WorkDir: one directory
// per run, named by the run's id, removed when the run's finished notice
// arrives, by the periodic sweep, and when the agent stops.

// trashSuffix marks a workspace being removed: it is renamed first (under
// a.mu, so no job of the run can start in it meanwhile) and removed after.
const trashSuffix = ".removing"

// sweepReadTimeout bounds the sweep's read of one run document.
const sweepReadTimeout = 5 * time.Second

// workspace returns the workspace directory of a run; the run id must be a
// ULID, so it can never name a path outside WorkDir.
func (a *Agent) workspace(runID string) (string, error) {
	if !isRunID(runID) {
		return "", fmt.Errorf("run id %q is not a ULID", runID)
	}
	return filepath.Join(a.cfg.WorkDir, runID), nil
}

// isRunID reports whether name is a run id (a ULID).
func isRunID(name string) bool {
	_, err := ulid.ParseStrict(name)
	return err == nil
}

// removeWorkspace removes the workspace of a run unless a job of the run
// is active here. The directory is renamed while a.mu is held, so a job
// that registers after the check gets a fresh workspace, never a half
// removed one.
func (a *Agent) removeWorkspace(runID, why string) {
	dir, err := a.workspace(runID)
	if err != nil {
		return
	}
	trash := dir + trashSuffix
	a.mu.Lock()
	if a.runActive(runID) {
		a.mu.Unlock()
		return
	}
	err = os.Rename(dir, trash)
	a.mu.Unlock()
	if os.IsNotExist(err) {
		return
	}
	if err != nil {
		a.log.Warn().Err(err).Str("run_id", runID).Msg("remove workspace")
		return
	}
	if err := os.RemoveAll(trash); err != nil {
		a.log.Warn().Err(err).Str("run_id", runID).Msg("remove workspace")
		return
	}
	a.log.Debug().Str("run_id", runID).Str("why", why).Msg("workspace removed")
}

// onRunEvent removes the workspace of a finished run when no stage of it
// runs here.
func (a *Agent) onRunEvent(m *nats.Msg) {
	var ev wire.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Type != wire.RunFinished {
		return
	}
	a.removeWorkspace(ev.RunID, "run finished")
}

// sweepWorkspaces sweeps the work directory at once and then every
// SweepInterval until ctx ends.
func (a *Agent) sweepWorkspaces(ctx context.Context) {
	t := time.NewTicker(a.cfg.SweepInterval)
	defer t.Stop()
	for {
		a.sweep(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweep removes the workspaces that sweepable allows, and what an
// interrupted removal left behind. It touches only entries named by a run
// id.
func (a *Agent) sweep(ctx context.Context) {
	entries, err := os.ReadDir(a.cfg.WorkDir)
	if err != nil {
		a.log.Warn().Err(err).Msg("list workspaces")
		return
	}
	for _, e := range entries {
		if ctx.Err() != nil {
			return
		}
		name := e.Name()
		if !e.IsDir() {
			continue
		}
		if runID, ok := strings.CutSuffix(name, trashSuffix); ok && isRunID(runID) {
			if err := os.RemoveAll(filepath.Join(a.cfg.WorkDir, name)); err != nil {
				a.log.Warn().Err(err).Str("run_id", runID).Msg("remove workspace")
			}
			continue
		}
		if !isRunID(name) {
			continue
		}
		a.mu.Lock()
		active := a.runActive(name)
		a.mu.Unlock()
		if active {
			continue
		}
		doc, read := a.readRun(ctx, name, sweepReadTimeout)
		if sweepable(active, doc, read) {
			a.removeWorkspace(name, "swept: its run ended or is gone")
		}
	}
}

// removeWorkspaces removes every run workspace under WorkDir (the entries
// named by a run id, and those being removed) and nothing else; the agent
// calls it when it stops, once no job is active.
func (a *Agent) removeWorkspaces() {
	entries, err := os.ReadDir(a.cfg.WorkDir)
	if err != nil {
		a.log.Warn().Err(err).Msg("list workspaces")
		return
	}
	for _, e := range entries {
		runID, _ := strings.CutSuffix(e.Name(), trashSuffix)
		if !e.IsDir() || !isRunID(runID) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(a.cfg.WorkDir, e.Name())); err != nil {
			a.log.Warn().Err(err).Str("run_id", runID).Msg("remove workspace")
		}
	}
}
