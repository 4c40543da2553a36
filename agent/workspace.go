package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/oklog/ulid/v2"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// This file holds the run workspaces under Config.WorkDir.
//
// A run's workspace has a stable path per repository and pipeline:
// <WorkDir>/<repo>/<pipeline>/<lane>, repository and pipeline as
// subjects.RepoToken spells them, lane the lowest number no other run
// holds on this agent. So the next run of a pipeline gets the same path
// (tools that key their caches by path, such as go vet, hit them), and
// two runs at once never share one: a run holds its lane from its first
// stage here until it ends, and the stages of one run on this agent
// share its workspace. The file <lane>.run beside the lane names the run
// that holds it.
//
// When a run ends (its finished notice, the periodic sweep, the agent
// stopping) its lane is released: its marker goes, and so does the
// workspace itself unless Config.KeepWorkspaces keeps it for the next
// run, as Buildkite keeps a checkout per agent and pipeline.

// Workspace layout names.
const (
	// laneMarker is the suffix of the file naming the run that holds a
	// lane, and the stage that took it: "RUN STAGE" (see parseMarker).
	laneMarker = ".run"
	// trashPrefix marks a workspace being removed: it is renamed to
	// <WorkDir>/<trashPrefix><ULID> first (under a.mu, so no job can
	// start in it meanwhile) and removed after.
	trashPrefix = ".removing-"
)

// sweepReadTimeout bounds the sweep's read of one run's end.
const sweepReadTimeout = 5 * time.Second

// laneHolder is what a lane marker names: a run, and the stage of it that
// took the lane (whose document says the run exists).
type laneHolder struct{ run, stage string }

// parseMarker reads a lane marker's content: "RUN STAGE", or "RUN" as
// agents before the stage was recorded wrote it.
func parseMarker(data []byte) (laneHolder, bool) {
	run, stage, _ := strings.Cut(strings.TrimSpace(string(data)), " ")
	return laneHolder{run: run, stage: stage}, isRunID(run)
}

// isRunID reports whether name is a run id (a ULID).
func isRunID(name string) bool {
	_, err := ulid.ParseStrict(name)
	return err == nil
}

// pipelineDir is the directory of the lanes of a job's pipeline.
func (a *Agent) pipelineDir(j *wire.Job) string {
	return filepath.Join(a.cfg.WorkDir, subjects.RepoToken(j.Repo), subjects.RepoToken(j.Pipeline))
}

// Workspace returns the workspace of a run on this agent, "" when the
// run holds none here.
func (a *Agent) Workspace(runID string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lanes[runID]
}

// workspaceFor returns the workspace of the job's run, made if need be:
// the lane the run holds here, or the lowest free one of its pipeline.
// The job must be registered (a.register), so its run's lane cannot be
// released meanwhile.
func (a *Agent) workspaceFor(j *job) (string, error) {
	if !isRunID(j.RunID) {
		return "", fmt.Errorf("run id %q is not a ULID", j.RunID)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if dir, ok := a.lanes[j.RunID]; ok {
		return dir, os.MkdirAll(dir, 0o750)
	}
	parent := a.pipelineDir(&j.Job)
	if err := os.MkdirAll(parent, 0o750); err != nil {
		return "", fmt.Errorf("workspace: %w", err)
	}
	held, err := heldLanes(parent)
	if err != nil {
		return "", fmt.Errorf("workspace: %w", err)
	}
	// A run whose marker is here from before (this agent restarted while
	// it ran) takes its lane back.
	lane := -1
	for n, run := range held {
		if run == j.RunID {
			lane = n
		}
	}
	for n := 0; lane < 0; n++ {
		if _, taken := held[n]; !taken {
			lane = n
			if err := os.WriteFile(filepath.Join(parent, strconv.Itoa(n)+laneMarker), []byte(j.RunID+" "+j.Stage.Key), 0o640); err != nil {
				return "", fmt.Errorf("workspace: %w", err)
			}
		}
	}
	dir := filepath.Join(parent, strconv.Itoa(lane))
	if !a.cfg.KeepWorkspaces {
		// A clean workspace: what a run that ended while this agent was
		// down left there goes.
		if err := a.trash(dir); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("workspace: %w", err)
	}
	a.lanes[j.RunID] = dir
	return dir, nil
}

// heldLanes returns the lanes of a pipeline directory that a marker
// says a run holds, by lane number.
func heldLanes(parent string) (map[int]string, error) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return nil, err
	}
	held := map[int]string{}
	for _, e := range entries {
		num, ok := strings.CutSuffix(e.Name(), laneMarker)
		n, err := strconv.Atoi(num)
		if !ok || err != nil || n < 0 || !e.Type().IsRegular() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(parent, e.Name()))
		if err != nil {
			return nil, err
		}
		h, _ := parseMarker(data)
		held[n] = h.run
	}
	return held, nil
}

// trash removes dir: it is renamed out of the way at once (the caller
// holds a.mu) and removed after, by this call; a removal cut short is
// finished by the sweep.
func (a *Agent) trash(dir string) error {
	trash := filepath.Join(a.cfg.WorkDir, trashPrefix+ulid.Make().String())
	if err := os.Rename(dir, trash); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	if err := os.RemoveAll(trash); err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	return nil
}

// releaseWorkspace releases the lane of a run unless a job of the run is
// active here: its marker goes, and its workspace unless KeepWorkspaces.
// marker is the lane's marker file when the caller found it on disk
// (the sweep), "" to look the run up among those this agent placed.
func (a *Agent) releaseWorkspace(runID, marker, why string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.runActive(runID) {
		return
	}
	dir, ok := a.lanes[runID]
	switch {
	case ok:
		marker = dir + laneMarker
	case marker != "":
		dir = strings.TrimSuffix(marker, laneMarker)
	default:
		return
	}
	// The marker goes last: until it has, no other run can take the lane.
	if !a.cfg.KeepWorkspaces {
		if err := a.trash(dir); err != nil {
			a.log.Warn().Err(err).Str("run_id", runID).Msg("remove workspace")
			return
		}
	}
	if err := os.Remove(marker); err != nil && !errors.Is(err, fs.ErrNotExist) {
		a.log.Warn().Err(err).Str("run_id", runID).Msg("release workspace")
		return
	}
	delete(a.lanes, runID)
	if !a.cfg.KeepWorkspaces {
		// Empty pipeline and repository directories go too (a removal
		// that finds one in use fails harmlessly).
		parent := filepath.Dir(dir)
		if os.Remove(parent) == nil {
			_ = os.Remove(filepath.Dir(parent))
		}
	}
	a.log.Debug().Str("run_id", runID).Str("workspace", dir).Str("why", why).Msg("workspace released")
}

// onRunEvent releases the workspace of a finished run when no stage of it
// runs here.
func (a *Agent) onRunEvent(m *nats.Msg) {
	var ev wire.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil || ev.Type != wire.RunFinished {
		return
	}
	a.releaseWorkspace(ev.RunID, "", "run finished")
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

// markers returns the lane markers under the work directory, with what
// they name.
func (a *Agent) markers() (map[string]laneHolder, error) {
	paths, err := filepath.Glob(filepath.Join(a.cfg.WorkDir, "*", "*", "*"+laneMarker))
	if err != nil {
		return nil, err
	}
	out := make(map[string]laneHolder, len(paths))
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue // released meanwhile
		}
		if h, ok := parseMarker(data); ok {
			out[p] = h
		}
	}
	return out, nil
}

// sweep releases the lanes of runs that sweepable allows, and removes
// what an interrupted removal left behind. It touches only lanes with a
// marker naming a run, and trash.
func (a *Agent) sweep(ctx context.Context) {
	entries, err := os.ReadDir(a.cfg.WorkDir)
	if err != nil {
		a.log.Warn().Err(err).Msg("list workspaces")
		return
	}
	for _, e := range entries {
		if id, ok := strings.CutPrefix(e.Name(), trashPrefix); ok && isRunID(id) {
			if err := os.RemoveAll(filepath.Join(a.cfg.WorkDir, e.Name())); err != nil {
				a.log.Warn().Err(err).Msg("remove workspace")
			}
		}
	}
	markers, err := a.markers()
	if err != nil {
		a.log.Warn().Err(err).Msg("list workspaces")
		return
	}
	for _, marker := range slices.Sorted(maps.Keys(markers)) {
		if ctx.Err() != nil {
			return
		}
		h := markers[marker]
		a.mu.Lock()
		active := a.runActive(h.run)
		a.mu.Unlock()
		if active {
			continue
		}
		if sweepable(active, a.readRunEnd(ctx, h, sweepReadTimeout)) {
			a.releaseWorkspace(h.run, marker, "swept: its run ended or is gone")
		}
	}
}

// removeWorkspaces releases every lane under WorkDir, removing the
// workspaces unless KeepWorkspaces, and nothing else; the agent calls it
// when it stops, once no job is active.
func (a *Agent) removeWorkspaces() {
	markers, err := a.markers()
	if err != nil {
		a.log.Warn().Err(err).Msg("list workspaces")
		return
	}
	for marker, h := range markers {
		a.releaseWorkspace(h.run, marker, "agent stopping")
	}
}
