// Package metrics is what weft's components count for Prometheus: the
// dispatchers' view of triggers, queue time, stages and runs. Each
// component registers its metrics on a registry its owner gives it, and
// its owner serves them (/metrics, promhttp).
package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// QueueBuckets are the buckets of the queue-time histogram, 5 ms to 1 h,
// on round numbers: the SLI "95 % of stages start within 60 s" reads off
// the le="60" bucket (deploy/grafana's dashboard).
var QueueBuckets = []float64{
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60,
	120, 300, 600, 900, 1800, 3600,
}

// DurationBuckets are the buckets of stage and run durations, 50 ms to
// 6 h.
var DurationBuckets = prometheus.ExponentialBucketsRange(0.05, 6*3600, 20)

// Dispatcher holds a dispatcher's metrics.
type Dispatcher struct {
	// StageQueue is weft_stage_queue_seconds{queue,tier}: from a stage's
	// job being queued to its start.
	StageQueue *prometheus.HistogramVec
	// StageDuration is weft_stage_duration_seconds{queue,state}.
	StageDuration *prometheus.HistogramVec
	// StageFailures is weft_stage_failures_total{queue,category}.
	StageFailures *prometheus.CounterVec
	// RunDuration is weft_run_duration_seconds{state}: from creation to
	// the end.
	RunDuration *prometheus.HistogramVec
	// Triggers is weft_triggers_total{outcome,reason}: admitted, deduped,
	// or refused with its reason (invalid, wip, backpressure).
	Triggers *prometheus.CounterVec
	// DeadLetters is weft_dead_letters_total{queue}.
	DeadLetters *prometheus.CounterVec
	// Redeliveries is weft_redeliveries_total{queue}: stage jobs started
	// again after an attempt of them had started (its agent died or
	// lost the job), as the next attempt of the same job.
	Redeliveries *prometheus.CounterVec
	// ReconcileRepairs is weft_reconcile_repairs_total{kind}: what the
	// reconcile loop repaired, lost_job (queued again) or missed_finish
	// (a finished event the run never took).
	ReconcileRepairs *prometheus.CounterVec
}

// NewDispatcher makes a dispatcher's metrics and registers them on reg.
func NewDispatcher(reg prometheus.Registerer) *Dispatcher {
	m := &Dispatcher{
		StageQueue: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "weft_stage_queue_seconds", Help: "Time from a stage's job being queued to its start, by queue and tier.", Buckets: QueueBuckets,
		}, []string{"queue", "tier"}),
		StageDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "weft_stage_duration_seconds", Help: "Time from a stage's start to its end, by queue and final state.", Buckets: DurationBuckets,
		}, []string{"queue", "state"}),
		StageFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_stage_failures_total", Help: "Stage attempts that failed, by queue and category (command, timeout, oom, infra, cancelled).",
		}, []string{"queue", "category"}),
		RunDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "weft_run_duration_seconds", Help: "Time from a run's creation to its end, by final state.", Buckets: DurationBuckets,
		}, []string{"state"}),
		Triggers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_triggers_total", Help: "Triggers handled, by outcome (admitted, deduped, refused) and refusal reason (invalid, wip, backpressure).",
		}, []string{"outcome", "reason"}),
		DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_dead_letters_total", Help: "Stage jobs dead-lettered after their last delivery, by queue.",
		}, []string{"queue"}),
		Redeliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_redeliveries_total", Help: "Stage jobs started again after an attempt of them had started (its agent died or lost the job), by queue.",
		}, []string{"queue"}),
		ReconcileRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_reconcile_repairs_total", Help: "Repairs of the reconcile loop, by kind: lost_job (a job gone from its queue, queued again) or missed_finish (a finished event the run never took).",
		}, []string{"kind"}),
	}
	reg.MustRegister(m.StageQueue, m.StageDuration, m.StageFailures, m.RunDuration, m.Triggers, m.DeadLetters, m.Redeliveries, m.ReconcileRepairs)
	return m
}

// Seconds returns d in seconds, at least 0 (clocks of two machines).
func Seconds(d time.Duration) float64 { return max(0, d.Seconds()) }
