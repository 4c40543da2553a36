package metrics

import "github.com/prometheus/client_golang/prometheus"

// Autoscale holds the metrics of weft autoscale.
type Autoscale struct {
	// Decisions is weft_autoscale_decisions_total{queue,action}: every
	// decision taken, by queue and action (up, down, hold, hold-at-max,
	// settling).
	Decisions *prometheus.CounterVec
	// Agents is weft_autoscale_agents{queue}: the agents the registry
	// showed serving the queue at the last decision, draining ones left
	// out.
	Agents *prometheus.GaugeVec
	// Managed is weft_autoscale_managed_agents{queue}: the agents of the
	// queue this process started and may remove (local agents only).
	Managed *prometheus.GaugeVec
	// Target is weft_autoscale_target_agents{queue}: the agents the last
	// decision wanted.
	Target *prometheus.GaugeVec
	// Min is weft_autoscale_min_agents{queue}: the minimum in force, the
	// schedule's when it raises it.
	Min *prometheus.GaugeVec
	// HookFailures is weft_autoscale_hook_failures_total{queue}: changes
	// that failed, a hook that exited with an error or a local agent that
	// could not be started.
	HookFailures *prometheus.CounterVec
}

// NewAutoscale makes the metrics of weft autoscale and registers them on
// reg.
func NewAutoscale(reg prometheus.Registerer) *Autoscale {
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{"queue"})
	}
	m := &Autoscale{
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_autoscale_decisions_total", Help: "Autoscaling decisions, by queue and action (up, down, hold, hold-at-max, settling).",
		}, []string{"queue", "action"}),
		Agents:  gauge("weft_autoscale_agents", "Agents the registry showed serving the queue at the last decision, draining ones left out."),
		Managed: gauge("weft_autoscale_managed_agents", "Agents of the queue this autoscaler started and may remove."),
		Target:  gauge("weft_autoscale_target_agents", "Agents the last decision wanted for the queue."),
		Min:     gauge("weft_autoscale_min_agents", "Minimum of agents in force for the queue: the policy's, or a schedule rule's that raises it."),
		HookFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_autoscale_hook_failures_total", Help: "Scaling changes that failed (a hook exited with an error, a local agent did not start), by queue.",
		}, []string{"queue"}),
	}
	reg.MustRegister(m.Decisions, m.Agents, m.Managed, m.Target, m.Min, m.HookFailures)
	return m
}
