package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bench"
	"github.com/weft-ci/weft/internal/busybox"
	"github.com/weft-ci/weft/wire"
)

// Benchmarks report weft next to a raw JetStream baseline measured in the
// same benchmark on the same machine: publish + fetch(1) + ack of a job and
// a fork/exec of `true`, with no weft logic. Ratios are weft/baseline for
// latencies and weft/baseline for throughput (higher is better there).

// rawQueue is the baseline: a work-queue stream with one pull consumer.
type rawQueue struct {
	js   jetstream.JetStream
	cons jetstream.Consumer
}

func newRawQueue(b *testing.B, js jetstream.JetStream) *rawQueue {
	ctx := context.Background()
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name: "BASELINE", Subjects: []string{"baseline.>"}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
	}); err != nil {
		b.Fatal(err)
	}
	c, err := js.CreateOrUpdateConsumer(ctx, "BASELINE", jetstream.ConsumerConfig{Durable: "w", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		b.Fatal(err)
	}
	return &rawQueue{js: js, cons: c}
}

// work fetches one job, starts `true`, acks and waits for it; it returns
// when the process started, or false when no job came within d.
func (q *rawQueue) work(d time.Duration) (time.Time, bool) {
	batch, err := q.cons.Fetch(1, jetstream.FetchMaxWait(d))
	if err != nil {
		return time.Time{}, false
	}
	for msg := range batch.Messages() {
		cmd := exec.Command("true")
		if err := cmd.Start(); err != nil {
			return time.Time{}, false
		}
		started := time.Now()
		_ = msg.DoubleAck(context.Background())
		_ = cmd.Wait()
		return started, true
	}
	return time.Time{}, false
}

// percentile is bench.Percentile in milliseconds.
func percentile(d []time.Duration, p float64) float64 {
	return float64(bench.Percentile(d, p).Microseconds()) / 1000
}

// BenchmarkDispatchLatency measures stage-ready (the dispatcher queues the
// stage) to process-started (the agent has started its shell), against
// publish to `true` started through a raw queue with a waiting worker.
func BenchmarkDispatchLatency(b *testing.B) {
	s := StartStack(b, StackConfig{})
	q := newRawQueue(b, s.Bus.JS)
	ctx := context.Background()
	var weft, raw []time.Duration
	text := "name: lat\nstages:\n  - key: s\n    commands: [true]\n"
	for b.Loop() {
		// Baseline: a worker already waiting in Fetch, as an idle agent.
		var started time.Time
		var wg sync.WaitGroup
		ready := make(chan struct{})
		wg.Go(func() {
			close(ready)
			started, _ = q.work(5 * time.Second)
		})
		<-ready
		t0 := time.Now()
		if _, err := s.Bus.JS.Publish(ctx, "baseline.job", []byte("{}")); err != nil {
			b.Fatal(err)
		}
		wg.Wait()
		raw = append(raw, started.Sub(t0))

		r, _ := s.Run(b, text)
		st := r.Stage("s")
		weft = append(weft, st.Started.Sub(st.Queued))
	}
	report(b, "p50-ms", percentile(weft, 0.5), percentile(raw, 0.5))
	report(b, "p99-ms", percentile(weft, 0.99), percentile(raw, 0.99))
}

// report prints a weft figure next to its baseline and their ratio
// (weft/baseline).
func report(b *testing.B, unit string, weft, base float64) {
	b.ReportMetric(weft, "weft-"+unit)
	b.ReportMetric(base, "baseline-"+unit)
	if base > 0 {
		b.ReportMetric(weft/base, "ratio-"+unit)
	}
}

// BenchmarkLifecycle runs a pipeline of N independent `true` stages on an
// agent with 2 slots, against N raw jobs worked by 2 workers.
func BenchmarkLifecycle(b *testing.B) {
	const n = 100
	s := StartStack(b, StackConfig{Slots: 2})
	q := newRawQueue(b, s.Bus.JS)
	ctx := context.Background()
	var sb strings.Builder
	sb.WriteString("name: many\nstages:\n")
	for i := range n {
		fmt.Fprintf(&sb, "  - key: s%d\n    commands: [true]\n", i)
	}
	text := sb.String()
	var weftTime, rawTime time.Duration
	for b.Loop() {
		t0 := time.Now()
		for range n {
			if _, err := s.Bus.JS.Publish(ctx, "baseline.job", []byte("{}")); err != nil {
				b.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		done := 0
		for range 2 {
			wg.Go(func() {
				for {
					mu.Lock()
					if done >= n {
						mu.Unlock()
						return
					}
					done++
					mu.Unlock()
					if _, ok := q.work(5 * time.Second); !ok {
						b.Error("baseline job lost")
						return
					}
				}
			})
		}
		wg.Wait()
		rawTime += time.Since(t0)

		t0 = time.Now()
		r, _ := s.Run(b, text)
		weftTime += time.Since(t0)
		if r.State != wire.RunSucceeded {
			b.Fatalf("run %s", r.State)
		}
	}
	iters := float64(b.N)
	if iters == 0 {
		return
	}
	weftRate := n * iters / weftTime.Seconds()
	rawRate := n * iters / rawTime.Seconds()
	b.ReportMetric(weftRate, "weft-stages/s")
	b.ReportMetric(rawRate, "baseline-stages/s")
	b.ReportMetric(weftRate/rawRate, "ratio-throughput")
}

// BenchmarkWeftRun is the wall time of `weft run` on a one-stage `true`
// pipeline: process start, embedded server, provisioning, the run, exit.
func BenchmarkWeftRun(b *testing.B) {
	dir := b.TempDir()
	file := filepath.Join(dir, "true.yml")
	if err := os.WriteFile(file, []byte("name: one\nstages:\n  - key: t\n    commands: [true]\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	var walls []time.Duration
	for b.Loop() {
		res := RunWeft(b, weftBin, dir, nil, "run", file)
		if res.Code != 0 {
			b.Fatalf("weft run exited %d: %s", res.Code, res.Stderr)
		}
		walls = append(walls, res.Elapsed)
	}
	b.ReportMetric(percentile(walls, 0.5), "p50-ms")
	b.ReportMetric(percentile(walls, 0.99), "max-ms")
}

// BenchmarkContainerStage runs a one-stage `true` pipeline in a container
// (stage queued to finished, the container created, started, waited for and
// removed) next to `ctr run --rm` of the same image and to the same stage on
// the host, in the same benchmark.
func BenchmarkContainerStage(b *testing.B) {
	Containerd(b)
	s := StartStack(b, StackConfig{})
	boxed := "name: boxed\nstages:\n  - key: s\n    image: " + busybox.Ref + "\n    commands: [true]\n"
	host := "name: host\nstages:\n  - key: s\n    commands: [true]\n"
	var weft, onHost, ctr []time.Duration
	i := 0
	for b.Loop() {
		i++
		t0 := time.Now()
		out, err := exec.Command("ctr", "-n", "weft", "run", "--rm", busybox.Ref, fmt.Sprintf("weft-bench-%d-%d", os.Getpid(), i), "true").CombinedOutput()
		if err != nil {
			b.Fatalf("ctr run: %v: %s", err, out)
		}
		ctr = append(ctr, time.Since(t0))

		r, _ := s.Run(b, boxed)
		st := r.Stage("s")
		if st.State != wire.StageSucceeded {
			b.Fatalf("container stage %s: %s", st.State, st.Message)
		}
		weft = append(weft, st.Finished.Sub(st.Queued))

		r, _ = s.Run(b, host)
		st = r.Stage("s")
		onHost = append(onHost, st.Finished.Sub(st.Queued))
	}
	report(b, "p50-ms", percentile(weft, 0.5), percentile(ctr, 0.5))
	b.ReportMetric(percentile(onHost, 0.5), "host-stage-p50-ms")
}
