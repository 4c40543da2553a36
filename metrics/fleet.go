package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// FleetTimeout is how long the fleet collector waits for a snapshot by
// default.
const FleetTimeout = 5 * time.Second

// The states of weft_agents.
const (
	AgentIdle     = "idle"
	AgentBusy     = "busy"
	AgentDraining = "draining"
)

// Fleet is a snapshot of the fleet's load, as the fleet collector
// (NewFleet) reports it. Entries with the same labels add up.
type Fleet struct {
	// Jobs are the jobs of each queue and tier.
	Jobs []TierJobs
	// Agents are the agents serving each queue, by state.
	Agents []AgentCount
	// Repos are the repositories with runs in flight or waiting.
	Repos []RepoLoad
}

// TierJobs is the jobs of one queue at one tier.
type TierJobs struct {
	// Queue and Tier are the labels queue and tier.
	Queue, Tier string
	// Waiting is the jobs no agent has taken yet (weft_jobs_waiting).
	Waiting uint64
	// Running is the jobs agents hold (weft_jobs_running).
	Running uint64
}

// AgentCount is the agents serving one queue, by state
// (weft_agents{state=idle|busy|draining}).
type AgentCount struct {
	// Queue is the label queue.
	Queue string
	// Idle, Busy and Draining count the agents in each state.
	Idle, Busy, Draining int
}

// RepoLoad is one repository's admission state.
type RepoLoad struct {
	// Repo is the label repo: the repository's name, or its token when
	// the name is not known.
	Repo string
	// WIPInUse is the WIP leases it holds (weft_wip_in_use).
	WIPInUse int
	// RunsWaiting is its runs waiting for admission (weft_runs_waiting).
	RunsWaiting uint64
}

// fleet is the collector NewFleet returns.
type fleet struct {
	read    func(context.Context) (Fleet, error)
	timeout time.Duration
	errors  prometheus.Counter

	jobsWaiting, jobsRunning, agents, wipInUse, runsWaiting *prometheus.Desc
}

// NewFleet returns a collector of the fleet gauges: on each scrape it
// calls read, with a context that ends after timeout (FleetTimeout when
// timeout is 0 or less), and reports weft_jobs_waiting{queue,tier},
// weft_jobs_running{queue,tier}, weft_agents{queue,state},
// weft_wip_in_use{repo} and weft_runs_waiting{repo}. A read that fails
// counts in weft_fleet_scrape_errors_total and reports nothing else, so
// the gauges go stale instead of dropping to 0. read runs on the
// scraping goroutine; scrapes at once read at once.
func NewFleet(read func(context.Context) (Fleet, error), timeout time.Duration) prometheus.Collector {
	if timeout <= 0 {
		timeout = FleetTimeout
	}
	return &fleet{
		read:    read,
		timeout: timeout,
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_fleet_scrape_errors_total", Help: "Scrapes whose fleet snapshot could not be read: the fleet gauges were left out.",
		}),
		jobsWaiting: prometheus.NewDesc("weft_jobs_waiting", "Jobs no agent has taken yet, by queue and tier.", []string{"queue", "tier"}, nil),
		jobsRunning: prometheus.NewDesc("weft_jobs_running", "Jobs agents hold (taken, not yet acknowledged), by queue and tier.", []string{"queue", "tier"}, nil),
		agents:      prometheus.NewDesc("weft_agents", "Registered agents serving a queue, by state (idle, busy, draining); an agent serving several queues counts under each.", []string{"queue", "state"}, nil),
		wipInUse:    prometheus.NewDesc("weft_wip_in_use", "WIP leases held, by repository: its runs in flight.", []string{"repo"}, nil),
		runsWaiting: prometheus.NewDesc("weft_runs_waiting", "Runs waiting for admission, by repository.", []string{"repo"}, nil),
	}
}

// Describe sends the descriptors of every metric Collect reports.
func (f *fleet) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{f.jobsWaiting, f.jobsRunning, f.agents, f.wipInUse, f.runsWaiting} {
		ch <- d
	}
	f.errors.Describe(ch)
}

// Collect reads a snapshot and sends its gauges and the error counter.
func (f *fleet) Collect(ch chan<- prometheus.Metric) {
	// The Collector interface passes no context: each read gets its
	// own, ending after timeout.
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	s, err := f.read(ctx)
	if err != nil {
		f.errors.Inc()
		f.errors.Collect(ch)
		return
	}
	for _, g := range f.gauges(s) {
		ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, g.value, g.labels...)
	}
	f.errors.Collect(ch)
}

// gauge is one series of a fleet gauge.
type gauge struct {
	desc   *prometheus.Desc
	labels []string // the values of desc's labels, in their order
	value  float64
}

// gauges turns a snapshot into series, adding up entries with the same
// labels (a registry refuses a series collected twice), in the order of
// their first entry.
func (f *fleet) gauges(s Fleet) []gauge {
	type key struct {
		desc   *prometheus.Desc
		labels string
	}
	var out []gauge
	at := map[key]int{}
	add := func(d *prometheus.Desc, v float64, labels ...string) {
		k := key{d, strings.Join(labels, "\xff")}
		if i, ok := at[k]; ok {
			out[i].value += v
			return
		}
		at[k] = len(out)
		out = append(out, gauge{desc: d, labels: labels, value: v})
	}
	for _, j := range s.Jobs {
		add(f.jobsWaiting, float64(j.Waiting), j.Queue, j.Tier)
		add(f.jobsRunning, float64(j.Running), j.Queue, j.Tier)
	}
	for _, a := range s.Agents {
		add(f.agents, float64(a.Idle), a.Queue, AgentIdle)
		add(f.agents, float64(a.Busy), a.Queue, AgentBusy)
		add(f.agents, float64(a.Draining), a.Queue, AgentDraining)
	}
	for _, r := range s.Repos {
		add(f.wipInUse, float64(r.WIPInUse), r.Repo)
		add(f.runsWaiting, float64(r.RunsWaiting), r.Repo)
	}
	return out
}
