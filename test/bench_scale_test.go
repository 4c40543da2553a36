package test

import (
	"encoding/json"
	"testing"

	"github.com/weft-ci/weft/bench"
)

// weft bench scale runs every scenario end to end, here at sizes CI can
// afford, and reports every figure with its baseline (the full sizes are
// the defaults; the README and the closing note have their
// figures). This checks the scenarios work and what they report holds
// together, not how fast anything is.
func TestBenchScaleRunsEveryScenario(t *testing.T) {
	t.Parallel()
	res := RunWeft(t, weftBin, t.TempDir(), nil, "bench", "scale", "--json",
		"--width-small", "10", "--width-large", "40",
		"--throughput-runs", "20", "--throughput-stages", "3",
		"--concurrent", "20", "--concurrent-agents", "2", "--concurrent-time", "8s", "--concurrent-window", "2s",
		"--flood-triggers", "200", "--flood-repos", "10",
		"--herd-slots", "1,4", "--herd-jobs", "5",
		"--storage-runs", "10", "--startup-runs", "2")
	if res.Code != 0 {
		t.Fatalf("weft bench scale exited %d: %s", res.Code, res.Stderr)
	}
	var out struct {
		Scale bench.ScaleResult `json:"scale"`
	}
	if err := json.Unmarshal([]byte(res.Stdout), &out); err != nil {
		t.Fatalf("weft bench scale --json printed %q: %v", res.Stdout, err)
	}
	r := out.Scale
	switch {
	case r.Width == nil || r.Width.SmallRate <= 0 || r.Width.LargeRate <= 0 || r.Width.Ratio <= 0:
		t.Errorf("width = %+v", r.Width)
	case r.Throughput == nil || r.Throughput.Rate <= 0 || r.Throughput.RawRate <= 0 || r.Throughput.Lost != 0:
		t.Errorf("throughput = %+v", r.Throughput)
	case r.Concurrency == nil || r.Concurrency.MostRunning != 20 || r.Concurrency.Redeliveries != 0 || r.Concurrency.Succeeded != 20 ||
		// CPU is read in clock ticks (10 ms): over the CI window of 2 s a
		// server with nothing to do may use none.
		r.Concurrency.Window <= 0 || r.Concurrency.ServerCores < 0 || r.Concurrency.DispatcherCores < 0 ||
		r.Concurrency.RSS["server"] <= 0 || r.Concurrency.RSS["dispatcher"] <= 0:
		t.Errorf("concurrency = %+v", r.Concurrency)
	case r.Flood == nil || r.Flood.PerTriggerLow <= 0 || r.Flood.PerTriggerHigh <= 0 || r.Flood.Critical <= 0 || r.Flood.High != 200-10*3:
		t.Errorf("flood = %+v", r.Flood)
	case r.Herd == nil || len(r.Herd.Sizes) != 2 || r.Herd.Sizes[0].PullsPerJob <= 0 || r.Herd.Sizes[1].DispatchP99 <= 0:
		t.Errorf("herd = %+v", r.Herd)
	case r.Storage == nil || r.Storage.BytesPerRun <= 0 || r.Storage.ByStream["KV_weft_stages"] <= 0 || r.Storage.Bound <= 0:
		t.Errorf("storage = %+v", r.Storage)
	case r.Startup == nil || r.Startup.P50 <= 0 || r.Startup.Baseline <= 0 || r.Startup.Min > r.Startup.Max:
		t.Errorf("startup = %+v", r.Startup)
	}
}
