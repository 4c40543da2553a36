package test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// scrape reads a /metrics page.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return fams
}

// metricsURL waits for the line of p that says where its metrics are.
func metricsURL(t *testing.T, p *proc) string {
	t.Helper()
	line := p.waitLine(t, &p.stderr, 30*time.Second, "metrics URL", func(l string) bool { return strings.Contains(l, "metrics on ") })
	return strings.Fields(strings.SplitN(line, "metrics on ", 2)[1])[0]
}

// sample returns the metric of fam whose labels are labels: its counter
// or gauge value, or its histogram's count.
func sample(fams map[string]*dto.MetricFamily, fam string, labels map[string]string) (float64, bool) {
	f := fams[fam]
	if f == nil {
		return 0, false
	}
	for _, m := range f.Metric {
		match := true
		for _, l := range m.Label {
			if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
				match = false
			}
		}
		if !match {
			continue
		}
		if h := m.GetHistogram(); h != nil {
			return float64(h.GetSampleCount()), true
		}
		if g := m.GetGauge(); g != nil {
			return g.GetValue(), true
		}
		return m.GetCounter().GetValue(), true
	}
	return 0, false
}

// A dispatcher's /metrics, scraped after runs: the queue-time histogram
// has each started stage under its queue and tier, and refusals for the
// WIP limit and for backpressure are counted by reason.
func TestMetricsCountQueueTimeAndRefusals(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	d := startWeft(t, nil, "dispatcher", "--server", f.url, "--metrics", "127.0.0.1:0", "--wip", "1", "--wip-policy", "refuse",
		"--max-pending", "1", "--backpressure-policy", "refuse")
	url := metricsURL(t, d)
	f.agent(t, "agent-m", "--queue", "main", "--slots", "2")

	r, _ := f.s.Run(t, "name: two\nqueue: main\nstages:\n  - key: a\n    commands: [true]\n  - key: b\n    depends_on: [a]\n    commands: [true]\n",
		func(tr *wire.Trigger) { tr.Priority, tr.Repo = subjects.High, "acme/one" })
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s", r.State)
	}
	// A run holding acme/two's only slot, and one more: refused for WIP.
	g := newGate(t)
	held := f.s.Submit(t, fmt.Sprintf("name: held\nqueue: main\nstages:\n  - key: s\n    commands: ['while [ ! -f %q ]; do sleep 0.02; done']\n", string(g)),
		func(tr *wire.Trigger) { tr.Repo = "acme/two" })
	waitFor(t, f.s, held, "running", func(r *wire.Run) bool { return r.Stage("s").State == wire.StageRunning })
	submit := func(text, repo string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, err := client.Submit(ctx, f.s.Bus.JS, wire.Trigger{ID: ulidString(), File: "p.yml", Pipeline: text, Repo: repo})
		return err
	}
	if err := submit("name: more\nqueue: main\nstages:\n  - key: s\n    commands: [true]\n", "acme/two"); !errors.Is(err, client.ErrRefused) {
		t.Fatalf("a second run of acme/two at WIP 1: %v, want refused", err)
	}
	// A queue nobody serves, at its bound of one pending job: the next is
	// refused for backpressure.
	if err := submit("name: stuck\nqueue: nobody\nstages:\n  - key: s\n    commands: [true]\n", "acme/three"); err != nil {
		t.Fatal(err)
	}
	if !Eventually(20*time.Second, func() bool {
		return submit("name: over\nqueue: nobody\nstages:\n  - key: s\n    commands: [true]\n", "acme/four") != nil
	}) {
		t.Fatal("the queue over its bound took another run")
	}
	g.open(t)
	f.s.Wait(t, held)

	fams := scrape(t, url)
	for _, c := range []struct {
		fam    string
		labels map[string]string
		want   float64
	}{
		{"weft_stage_queue_seconds", map[string]string{"queue": "main", "tier": "high"}, 2},
		{"weft_stage_queue_seconds", map[string]string{"queue": "main", "tier": "normal"}, 1},
		{"weft_triggers_total", map[string]string{"outcome": "refused", "reason": "wip"}, 1},
		{"weft_triggers_total", map[string]string{"outcome": "admitted"}, 3},
		{"weft_run_duration_seconds", map[string]string{"state": "succeeded"}, 2},
		{"weft_stage_duration_seconds", map[string]string{"queue": "main", "state": "succeeded"}, 3},
	} {
		if got, ok := sample(fams, c.fam, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.fam, c.labels, got, ok, c.want)
		}
	}
	if got, ok := sample(fams, "weft_triggers_total", map[string]string{"outcome": "refused", "reason": "backpressure"}); !ok || got < 1 {
		t.Errorf("weft_triggers_total{refused,backpressure} = %v (found %v), want at least 1", got, ok)
	}
	// The fleet gauges are there too: the job nobody serves waits.
	if got, ok := sample(fams, "weft_jobs_waiting", map[string]string{"queue": "nobody", "tier": "normal"}); !ok || got != 1 {
		t.Errorf("weft_jobs_waiting{queue=nobody,tier=normal} = %v (found %v), want 1", got, ok)
	}
	if _, ok := fams["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
}
