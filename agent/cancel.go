package agent

import (
	"encoding/json"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// This file holds the agent's registry of running jobs by run, which the
// cancel notices (subjects.Cancel), the workspace removal and the sweep
// consult.

// onCancel handles a cancel notice (subjects.Cancel): the run's stages it
// names, or the whole run.
func (a *Agent) onCancel(m *nats.Msg) {
	runID := subjects.CancelRun(m.Subject)
	var n wire.CancelNotice
	if len(m.Data) > 0 {
		if err := json.Unmarshal(m.Data, &n); err != nil {
			a.log.Warn().Err(err).Str("run_id", runID).Msg("malformed cancel notice")
			return
		}
	}
	if len(n.Stages) == 0 {
		a.cancelRun(runID, n.Epoch)
		return
	}
	a.cancelStages(runID, n.Stages)
}

// cancelStages cancels the running jobs of some stages of a run. A job of
// them fetched later finds its stage cancelling in its document.
func (a *Agent) cancelStages(runID string, stages []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for j := range a.active[runID] {
		if slices.Contains(stages, j.Stage.Key) {
			j.cancel(errStageCancelled)
		}
	}
}

// cancelMark is what an agent remembers of a run's cancel: when the
// notice came, and the run's epoch (Replays) then.
type cancelMark struct {
	at    time.Time
	epoch int
}

// cancelRun cancels the running jobs of a run and remembers the run, so a
// job of it fetched later is not started unless a retry queued it after
// the cancel (a later epoch).
func (a *Agent) cancelRun(runID string, epoch int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	for id, c := range a.cancelled {
		if now.Sub(c.at) > time.Hour {
			delete(a.cancelled, id)
		}
	}
	a.cancelled[runID] = cancelMark{at: now, epoch: epoch}
	for j := range a.active[runID] {
		j.cancel(errRunCancelled)
	}
}

// register records a running job; it reports false when its run was
// cancelled already.
func (a *Agent) register(j *job) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c, ok := a.cancelled[j.RunID]; ok && j.Epoch <= c.epoch {
		return false
	}
	if a.active[j.RunID] == nil {
		a.active[j.RunID] = map[*job]struct{}{}
	}
	a.active[j.RunID][j] = struct{}{}
	return true
}

// unregister forgets a job that register recorded.
func (a *Agent) unregister(j *job) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.active[j.RunID], j)
	if len(a.active[j.RunID]) == 0 {
		delete(a.active, j.RunID)
	}
}

// runActive reports whether a job of the run is registered here; the
// caller holds a.mu.
func (a *Agent) runActive(runID string) bool { return len(a.active[runID]) > 0 }
