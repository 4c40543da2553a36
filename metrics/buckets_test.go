package metrics

import (
	"os"
	"regexp"
	"strconv"
	"testing"
)

// TestTheDashboardReadsBucketsThatExist checks every histogram bucket
// the dashboard and the alerts name against the buckets weft exports:
// a query on an le= that is not a bound matches no series and draws an
// empty panel rather than an error.
func TestTheDashboardReadsBucketsThatExist(t *testing.T) {
	bounds := map[string][]float64{
		"weft_stage_queue_seconds":    QueueBuckets,
		"weft_stage_duration_seconds": DurationBuckets,
		"weft_run_duration_seconds":   DurationBuckets,
	}
	ref := regexp.MustCompile(`(weft_[a-z_]+)_bucket\{[^}]*le=\\?"([^"\\]+)\\?"`)
	found := 0
	for _, file := range []string{"../deploy/grafana/weft-dashboard.json", "../deploy/prometheus/weft-alerts.yml"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ref.FindAllSubmatch(data, -1) {
			found++
			name, le := string(m[1]), string(m[2])
			buckets, ok := bounds[name]
			if !ok {
				t.Errorf("%s: %s is not a weft histogram", file, name)
				continue
			}
			if !hasBound(buckets, le) {
				t.Errorf("%s: %s has no bucket le=%q (bounds %v)", file, name, le, buckets)
			}
		}
	}
	if found == 0 {
		t.Fatal("found no bucket in the dashboard or the alerts: the SLI panels are gone or the pattern is wrong")
	}
}

func hasBound(buckets []float64, le string) bool {
	for _, b := range buckets {
		if strconv.FormatFloat(b, 'g', -1, 64) == le {
			return true
		}
	}
	return false
}
