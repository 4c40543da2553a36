package metrics

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// series returns every series gathered from reg as name{k=v,...} and its
// value (a gauge's or a counter's).
func series(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := map[string]float64{}
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			out[f.GetName()+"{"+strings.Join(ls, ",")+"}"] = value(f.GetType(), m)
		}
	}
	return out
}

func value(typ dto.MetricType, m *dto.Metric) float64 {
	if typ == dto.MetricType_COUNTER {
		return m.GetCounter().GetValue()
	}
	return m.GetGauge().GetValue()
}

func TestFleetReportsTheSnapshot(t *testing.T) {
	snap := Fleet{
		Jobs: []TierJobs{
			{Queue: "default", Tier: "normal", Waiting: 3, Running: 1},
			{Queue: "gpu", Tier: "high", Waiting: 2},
		},
		Agents: []AgentCount{
			{Queue: "default", Idle: 1, Busy: 2},
			{Queue: "default", Draining: 1}, // the same queue again: adds up
		},
		Repos: []RepoLoad{{Repo: "acme/api", WIPInUse: 2, RunsWaiting: 5}},
	}
	var deadline time.Duration
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewFleet(func(ctx context.Context) (Fleet, error) {
		d, ok := ctx.Deadline()
		if !ok {
			t.Error("read without a deadline")
		}
		deadline = time.Until(d)
		return snap, nil
	}, 0))
	got := series(t, reg)
	want := map[string]float64{
		"weft_jobs_waiting{queue=default,tier=normal}": 3,
		"weft_jobs_running{queue=default,tier=normal}": 1,
		"weft_jobs_waiting{queue=gpu,tier=high}":       2,
		"weft_jobs_running{queue=gpu,tier=high}":       0,
		"weft_agents{queue=default,state=idle}":        1,
		"weft_agents{queue=default,state=busy}":        2,
		"weft_agents{queue=default,state=draining}":    1,
		"weft_wip_in_use{repo=acme/api}":               2,
		"weft_runs_waiting{repo=acme/api}":             5,
		"weft_fleet_scrape_errors_total{}":             0,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (found %v), want %v", k, g, ok, v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("gathered %d series, want %d: %v", len(got), len(want), got)
	}
	if deadline <= 0 || deadline > FleetTimeout {
		t.Errorf("read's deadline in %v, want within FleetTimeout %v", deadline, FleetTimeout)
	}
}

func TestFleetCountsAFailedRead(t *testing.T) {
	fail := true
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewFleet(func(context.Context) (Fleet, error) {
		if fail {
			return Fleet{}, errors.New("no bus")
		}
		return Fleet{Jobs: []TierJobs{{Queue: "q", Tier: "low"}}}, nil
	}, time.Second))
	for range 2 {
		got := series(t, reg)
		if len(got) != 1 {
			t.Errorf("after a failed read: %v, want only the error counter", got)
		}
	}
	if got := series(t, reg)["weft_fleet_scrape_errors_total{}"]; got != 3 {
		t.Errorf("weft_fleet_scrape_errors_total = %v after 3 failed reads, want 3", got)
	}
	fail = false
	got := series(t, reg)
	if _, ok := got["weft_jobs_waiting{queue=q,tier=low}"]; !ok || got["weft_fleet_scrape_errors_total{}"] != 3 {
		t.Errorf("after a good read: %v, want the gauges and 3 errors", got)
	}
}

// Describe names every metric the collector reports, and only those.
func TestFleetDescribesWhatItCollects(t *testing.T) {
	c := NewFleet(func(context.Context) (Fleet, error) {
		return Fleet{
			Jobs:   []TierJobs{{Queue: "q", Tier: "normal"}},
			Agents: []AgentCount{{Queue: "q"}},
			Repos:  []RepoLoad{{Repo: "r"}},
		}, nil
	}, time.Second)
	descs := make(chan *prometheus.Desc, 16)
	c.Describe(descs)
	close(descs)
	var described []string
	for d := range descs {
		described = append(described, d.String())
	}
	metrics := make(chan prometheus.Metric, 64)
	c.Collect(metrics)
	close(metrics)
	seen := map[string]bool{}
	for m := range metrics {
		seen[m.Desc().String()] = true
	}
	if len(seen) != len(described) {
		t.Errorf("collected %d metrics, described %d", len(seen), len(described))
	}
	for d := range seen {
		if !slices.Contains(described, d) {
			t.Errorf("collected %s, not described", d)
		}
	}
}
