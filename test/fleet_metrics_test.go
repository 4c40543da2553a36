package test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/metrics"
	"github.com/weft-ci/weft/wire"
)

// gaugeValue returns the value of the series of fam whose labels are
// exactly labels.
func gaugeValue(fams map[string]*dto.MetricFamily, fam string, labels map[string]string) (float64, bool) {
	for _, m := range fams[fam].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if !maps.Equal(got, labels) {
			continue
		}
		if c := m.GetCounter(); c != nil {
			return c.GetValue(), true
		}
		return m.GetGauge().GetValue(), true
	}
	return 0, false
}

// labelString writes labels as PromQL does: {k="v",...}.
func labelString(labels map[string]string) string {
	var pairs []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		pairs = append(pairs, fmt.Sprintf("%s=%q", k, labels[k]))
	}
	return "{" + strings.Join(pairs, ",") + "}"
}

// fleetWant is a fleet series and its value; absent says that a missing
// series counts as 0.
type fleetWant struct {
	fam    string
	labels map[string]string
	value  float64
	absent bool
}

// fleetMismatches scrapes url and lists the series of want that differ.
func fleetMismatches(t *testing.T, url string, want []fleetWant) []string {
	t.Helper()
	fams := scrape(t, url)
	var bad []string
	for _, w := range want {
		got, ok := gaugeValue(fams, w.fam, w.labels)
		if (ok || !w.absent) && (!ok || got != w.value) {
			bad = append(bad, fmt.Sprintf("%s%s = %v (found %v), want %v", w.fam, labelString(w.labels), got, ok, w.value))
		}
	}
	return bad
}

// The fleet gauges follow the stack: with a stage held running by a gate
// and a second run of the same repository waiting for its only WIP slot,
// a job runs on default/normal, the agent is busy, the repository holds
// one lease and has one run waiting; once the gate opens and both runs
// end, they are back to nothing running and an idle agent.
func TestFleetMetricsFollowTheStack(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Dispatcher: dispatcher.Config{WIPLimit: 1}})
	reg := prometheus.NewRegistry()
	reg.MustRegister(client.FleetCollector(s.Bus.JS))
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	t.Cleanup(srv.Close)
	url := srv.URL + "/metrics"

	// A name with a byte RepoToken escapes ('/') and an escaped '_'.
	const repo = "acme/fleet_x"
	g := newGate(t)
	first := s.Submit(t, g.pipeline("held", ""), onRepo(repo))
	waitFor(t, s, first, "running", stageIs("wait", wire.StageRunning))
	second := s.Submit(t, g.pipeline("next", ""), onRepo(repo))
	waitFor(t, s, second, "pending on wip", func(r *wire.Run) bool { return r.Pending != nil && r.Pending.Reason == wire.PendingWIP })

	normal := map[string]string{"queue": "default", "tier": "normal"}
	state := func(s string) map[string]string { return map[string]string{"queue": "default", "state": s} }
	byRepo := map[string]string{"repo": repo}
	errs := fleetWant{fam: "weft_fleet_scrape_errors_total", labels: map[string]string{}}
	held := []fleetWant{
		{fam: "weft_jobs_running", labels: normal, value: 1},
		{fam: "weft_jobs_waiting", labels: normal, value: 0},
		{fam: "weft_agents", labels: state("busy"), value: 1},
		{fam: "weft_agents", labels: state("idle"), value: 0},
		{fam: "weft_agents", labels: state("draining"), value: 0},
		{fam: "weft_wip_in_use", labels: byRepo, value: 1},
		{fam: "weft_runs_waiting", labels: byRepo, value: 1},
		errs,
	}
	var bad []string
	if !Eventually(30*time.Second, func() bool { bad = fleetMismatches(t, url, held); return len(bad) == 0 }) {
		t.Fatalf("with a stage held and a run waiting:\n%s", strings.Join(bad, "\n"))
	}

	g.open(t)
	for _, id := range []string{first, second} {
		if r, _ := s.Wait(t, id); r.State != wire.RunSucceeded {
			t.Fatalf("run %s %s", id, r.State)
		}
	}
	done := []fleetWant{
		{fam: "weft_jobs_running", labels: normal, value: 0},
		{fam: "weft_jobs_waiting", labels: normal, value: 0},
		{fam: "weft_agents", labels: state("busy"), value: 0},
		{fam: "weft_agents", labels: state("idle"), value: 1},
		{fam: "weft_agents", labels: state("draining"), value: 0},
		{fam: "weft_wip_in_use", labels: byRepo, absent: true},
		{fam: "weft_runs_waiting", labels: byRepo, absent: true},
		errs,
	}
	if !Eventually(30*time.Second, func() bool { bad = fleetMismatches(t, url, done); return len(bad) == 0 }) {
		t.Fatalf("after both runs ended:\n%s", strings.Join(bad, "\n"))
	}
}

// knownMetrics returns the metrics a weft process serves, from a
// registry with a dispatcher's metrics (each vector observed once, so
// that it is gathered) and the fleet collector over a snapshot with an
// entry of each kind: each family's name and label names, and the le
// values of its histogram buckets as the text exposition writes them.
func knownMetrics(t *testing.T) map[string]*knownMetric {
	t.Helper()
	reg := prometheus.NewRegistry()
	d := metrics.NewDispatcher(reg)
	v := reflect.ValueOf(d).Elem()
	for i := range v.NumField() {
		name := v.Type().Field(i).Name
		observed := false
		for n := range 8 { // the first label count the vector takes
			values := make([]string, n)
			switch c := v.Field(i).Interface().(type) {
			case *prometheus.HistogramVec:
				if o, err := c.GetMetricWithLabelValues(values...); err == nil {
					o.Observe(1)
					observed = true
				}
			case *prometheus.CounterVec:
				if o, err := c.GetMetricWithLabelValues(values...); err == nil {
					o.Inc()
					observed = true
				}
			case *prometheus.GaugeVec:
				if o, err := c.GetMetricWithLabelValues(values...); err == nil {
					o.Set(1)
					observed = true
				}
			default:
				t.Fatalf("metrics.Dispatcher.%s is a %T: teach knownMetrics to observe it", name, c)
			}
			if observed {
				break
			}
		}
		if !observed {
			t.Fatalf("metrics.Dispatcher.%s: no label count up to 7 fits", name)
		}
	}
	reg.MustRegister(metrics.NewFleet(func(context.Context) (metrics.Fleet, error) {
		return metrics.Fleet{
			Jobs:   []metrics.TierJobs{{Queue: "q", Tier: "normal"}},
			Agents: []metrics.AgentCount{{Queue: "q"}},
			Repos:  []metrics.RepoLoad{{Repo: "r"}},
		}, nil
	}, time.Second))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]*knownMetric{}
	for _, f := range fams {
		k := &knownMetric{histogram: f.GetType() == dto.MetricType_HISTOGRAM, labels: map[string]bool{}, le: map[string]bool{}}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				k.labels[l.GetName()] = true
			}
			for _, b := range m.GetHistogram().GetBucket() {
				k.le[strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)] = true
			}
		}
		known[f.GetName()] = k
	}
	return known
}

// knownMetric is what knownMetrics knows of one metric family.
type knownMetric struct {
	histogram bool
	labels    map[string]bool
	le        map[string]bool
}

// deployExpr is a PromQL expression of a deploy file and where it is.
type deployExpr struct {
	where, expr string
}

// dashboardExprs returns the expressions of every panel's targets,
// rows' panels included, and checks the dashboard's frame.
func dashboardExprs(t *testing.T, file string) []deployExpr {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		ID         int    `json:"id"`
		Title      string `json:"title"`
		Type       string `json:"type"`
		Datasource *struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var dash struct {
		UID           string            `json:"uid"`
		Title         string            `json:"title"`
		SchemaVersion int               `json:"schemaVersion"`
		Panels        []json.RawMessage `json:"panels"`
		Templating    struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query string `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	if dash.SchemaVersion != 39 || dash.UID == "" || dash.Title == "" {
		t.Errorf("%s: schemaVersion %d, uid %q, title %q; want 39 and a uid and title", file, dash.SchemaVersion, dash.UID, dash.Title)
	}
	dsVar := ""
	for _, v := range dash.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = "${" + v.Name + "}"
		}
	}
	if dsVar == "" {
		t.Errorf("%s: no Prometheus datasource variable", file)
	}
	var exprs []deployExpr
	ids := map[int]bool{}
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("%s: panel: %v", file, err)
			}
			if ids[p.ID] {
				t.Errorf("%s: panel id %d twice", file, p.ID)
			}
			ids[p.ID] = true
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if p.Datasource == nil || p.Datasource.UID != dsVar {
				t.Errorf("%s: panel %q does not use the datasource variable %s", file, p.Title, dsVar)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: panel %q has no query", file, p.Title)
			}
			for _, tg := range p.Targets {
				exprs = append(exprs, deployExpr{fmt.Sprintf("%s: panel %q", file, p.Title), tg.Expr})
			}
		}
	}
	walk(dash.Panels)
	return exprs
}

// alertExprs returns the expressions of every alert rule and checks that
// each has a summary and a description.
func alertExprs(t *testing.T, file string) ([]deployExpr, []string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var exprs []deployExpr
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			where := fmt.Sprintf("%s: alert %s", file, r.Alert)
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("%s (group %s): a rule without alert or expr", file, g.Name)
			}
			if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("%s: no summary or description", where)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for %q: %v", where, r.For, err)
				}
			}
			alerts = append(alerts, r.Alert)
			exprs = append(exprs, deployExpr{where, r.Expr})
		}
	}
	return exprs, alerts
}

var (
	// metricRE finds weft's series names in an expression.
	metricRE = regexp.MustCompile(`\bweft_[a-zA-Z0-9_:]*`)
	// selectorRE finds a weft series' label matchers.
	selectorRE = regexp.MustCompile(`\b(weft_[a-zA-Z0-9_:]*)\s*\{([^}]*)\}`)
	// matcherRE finds one label matcher.
	matcherRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	// groupingRE finds the label lists of by, without, on and ignoring.
	groupingRE = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)`)
)

// targetLabels are the labels Prometheus adds to every scraped series.
var targetLabels = map[string]bool{"instance": true, "job": true}

// checkExpr reports the metrics and labels of expr that the code does not
// serve. A histogram's series name its _bucket, _count or _sum.
func checkExpr(known map[string]*knownMetric, e deployExpr) []string {
	var bad []string
	find := func(series string) (*knownMetric, string) {
		if k := known[series]; k != nil && !k.histogram {
			return k, series
		}
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if base, ok := strings.CutSuffix(series, suffix); ok && known[base] != nil && known[base].histogram {
				return known[base], base
			}
		}
		return nil, ""
	}
	labels := map[string]bool{}
	names := metricRE.FindAllString(e.expr, -1)
	if len(names) == 0 {
		bad = append(bad, fmt.Sprintf("%s: %q names no weft metric", e.where, e.expr))
	}
	for _, n := range names {
		k, _ := find(n)
		if k == nil {
			bad = append(bad, fmt.Sprintf("%s: %s is no metric weft serves", e.where, n))
			continue
		}
		maps.Copy(labels, k.labels)
		if strings.HasSuffix(n, "_bucket") {
			labels["le"] = true
		}
	}
	for _, sel := range selectorRE.FindAllStringSubmatch(e.expr, -1) {
		k, base := find(sel[1])
		if k == nil {
			continue
		}
		for _, m := range matcherRE.FindAllStringSubmatch(sel[2], -1) {
			switch {
			case m[1] == "le" && strings.HasSuffix(sel[1], "_bucket"):
				if m[2] == "=" && !k.le[m[3]] {
					bad = append(bad, fmt.Sprintf("%s: %s has no bucket le=%q; its buckets are %v", e.where, base, m[3], slices.Sorted(maps.Keys(k.le))))
				}
			case !k.labels[m[1]] && !targetLabels[m[1]]:
				bad = append(bad, fmt.Sprintf("%s: %s has no label %s", e.where, base, m[1]))
			}
		}
	}
	for _, g := range groupingRE.FindAllStringSubmatch(e.expr, -1) {
		for l := range strings.SplitSeq(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !labels[l] && !targetLabels[l] {
				bad = append(bad, fmt.Sprintf("%s: no metric of %q has label %s", e.where, e.expr, l))
			}
		}
	}
	return bad
}

// The Grafana dashboard and the Prometheus alerts name only metrics,
// labels and buckets the code serves, so that neither drifts from it.
func TestDeployDashboardAndAlertsMatchTheMetrics(t *testing.T) {
	t.Parallel()
	known := knownMetrics(t)
	for _, want := range []string{"weft_jobs_waiting", "weft_jobs_running", "weft_agents", "weft_wip_in_use", "weft_runs_waiting", "weft_fleet_scrape_errors_total", "weft_stage_queue_seconds"} {
		if known[want] == nil {
			t.Fatalf("knownMetrics has no %s: %v", want, slices.Sorted(maps.Keys(known)))
		}
	}
	exprs := dashboardExprs(t, "../deploy/grafana/weft-dashboard.json")
	alerts, names := alertExprs(t, "../deploy/prometheus/weft-alerts.yml")
	for _, want := range []string{"WeftQueueTimeP95High", "WeftQueueDepthHigh", "WeftNoAgentsForQueue", "WeftDeadLetters"} {
		if !slices.Contains(names, want) {
			t.Errorf("weft-alerts.yml has no alert %s", want)
		}
	}
	used := map[string]bool{}
	for _, e := range append(exprs, alerts...) {
		for _, b := range checkExpr(known, e) {
			t.Error(b)
		}
		for _, n := range metricRE.FindAllString(e.expr, -1) {
			used[n] = true
		}
	}
	// The SLI, stages started within 60 s, reads a bucket at 60 s itself.
	sli := 0
	for _, e := range exprs {
		if strings.Contains(e.expr, "weft_stage_queue_seconds_bucket{le=") {
			sli++
			if !strings.Contains(e.expr, `weft_stage_queue_seconds_bucket{le="60"}`) {
				t.Errorf("the SLI reads %s, want the le=\"60\" bucket", e.expr)
			}
		}
	}
	if sli == 0 {
		t.Error("the dashboard has no SLI panel reading a queue-time bucket")
	}
	// The dashboard shows every fleet gauge.
	for _, n := range []string{"weft_jobs_waiting", "weft_jobs_running", "weft_agents", "weft_wip_in_use", "weft_runs_waiting", "weft_triggers_total", "weft_dead_letters_total", "weft_stage_queue_seconds_bucket"} {
		if !used[n] {
			t.Errorf("neither the dashboard nor the alerts use %s", n)
		}
	}
}

// checkExpr catches what drifts: an unknown metric, label or bucket.
func TestDeployCheckCatchesDrift(t *testing.T) {
	t.Parallel()
	known := knownMetrics(t)
	for _, c := range []struct {
		expr string
		ok   bool
	}{
		{`histogram_quantile(0.95, sum by (le, queue, tier) (rate(weft_stage_queue_seconds_bucket[5m])))`, true},
		{`sum by (instance) (rate(weft_fleet_scrape_errors_total[5m]))`, true},
		{`max by (queue, state) (weft_agents{state!="draining"})`, true},
		{`sum(rate(weft_stage_queue_seconds_bucket{le="60"}[5m]))`, true},
		{`sum(rate(weft_stage_queue_seconds_bucket{le="59.37943881144182"}[5m]))`, false},
		{`sum(rate(weft_stage_queue_seconds_total[5m]))`, false},
		{`sum by (repo) (weft_jobs_waiting)`, false},
		{`weft_agents{status="idle"}`, false},
		{`weft_queue_depth`, false},
		{`up`, false},
	} {
		bad := checkExpr(known, deployExpr{"test", c.expr})
		if (len(bad) == 0) != c.ok {
			t.Errorf("checkExpr(%q) = %v, want ok %v", c.expr, bad, c.ok)
		}
	}
}
