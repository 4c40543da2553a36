package agent

import "time"

// This file holds the agent's registry of running jobs by run, which the
// cancel notices (subjects.Cancel), the workspace removal and the sweep
// consult.

// cancelRun cancels the running jobs of a run and remembers the run, so a
// job of it fetched later is not started.
func (a *Agent) cancelRun(runID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := time.Now()
	for id, t := range a.cancelled {
		if now.Sub(t) > time.Hour {
			delete(a.cancelled, id)
		}
	}
	a.cancelled[runID] = now
	for j := range a.active[runID] {
		j.cancel(errRunCancelled)
	}
}

// register records a running job; it reports false when its run was
// cancelled already.
func (a *Agent) register(j *job) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.cancelled[j.RunID]; ok {
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
