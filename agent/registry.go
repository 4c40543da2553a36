package agent

import (
	"context"
	"encoding/json"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// This file holds the agent's entry in the agent registry (KV
// subjects.AgentsBucket) and the busy count it advertises.

// Busy returns how many jobs the agent holds now: from the moment one is
// taken until it is acked, handed back or dropped.
func (a *Agent) Busy() int { return int(a.busy.Load()) }

// setBusy changes the busy count by delta and signals the registry loop.
func (a *Agent) setBusy(delta int32) {
	a.busy.Add(delta)
	a.lastChange.Store(time.Now().UnixNano())
	a.signalChanged()
}

// signalChanged tells the registry loop the agent's entry changed.
func (a *Agent) signalChanged() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

// advertiseGap is the least time between two registry writes for busy
// count changes: a busy agent changes its count twice per job, and the
// registry is read by people and by weft status, for whom a second late
// is current. Without it each job cost the server two KV writes.
const advertiseGap = time.Second

// advertise keeps the agent's entry in the registry: at start, when its
// busy count changes (at most once per advertiseGap, the last change
// always written), and every third of the registry TTL; it deletes the
// entry when ctx ends.
func (a *Agent) advertise(ctx context.Context) {
	kv, err := a.js.KeyValue(ctx, subjects.AgentsBucket)
	if err != nil {
		a.log.Warn().Err(err).Msg("agent registry")
		return
	}
	host, _ := os.Hostname()
	info := wire.Agent{ID: a.cfg.ID, Hostname: host, Queues: a.cfg.Queues, Labels: a.cfg.Labels, Slots: a.cfg.Slots, Executor: a.cfg.Executor, Version: version(), Started: time.Now()}
	var last time.Time
	put := func() {
		last = time.Now()
		info.Busy, info.Seen, info.Stages, info.Draining = int(a.busy.Load()), last, a.runningStages(), a.draining.Err() != nil
		data, _ := json.Marshal(info)
		if _, err := kv.Put(ctx, a.cfg.ID, data); err != nil && ctx.Err() == nil {
			a.log.Warn().Err(err).Msg("agent registry")
		}
	}
	tick := time.NewTicker(subjects.AgentTTL / 3)
	defer tick.Stop()
	// late fires when a change came within advertiseGap of the last write.
	late := time.NewTimer(advertiseGap)
	late.Stop()
	defer late.Stop()
	pending := false
	put()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = kv.Delete(dctx, a.cfg.ID)
			cancel()
			return
		case <-a.changed:
			if pending {
				continue
			}
			if wait := advertiseGap - time.Since(last); wait > 0 {
				pending = true
				late.Reset(wait)
				continue
			}
			put()
		case <-late.C:
			pending = false
			put()
		case <-tick.C:
			put()
		}
	}
}

// runningStages returns the stages this agent runs now, as RUN/STAGE,
// sorted.
func (a *Agent) runningStages() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for run, jobs := range a.active {
		for j := range jobs {
			out = append(out, run+"/"+j.Stage.Key)
		}
	}
	slices.Sort(out)
	return out
}

// version returns the weft version this binary was built as, "(devel)"
// when it is not a tagged module build.
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
