package test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/weft-ci/weft/bench"
)

// weft bench artifacts moves artifacts through a weft server process by
// weft's store and by the raw Object Store, here at sizes CI can afford,
// and reports both with their ratio and the memory figures (the closing
// note of the issue has the full-size figures). This checks the scenario
// works and what it reports holds together, not how fast anything is.
func TestBenchArtifactsComparesWithTheRawObjectStore(t *testing.T) {
	t.Parallel()
	res := RunWeft(t, weftBin, t.TempDir(), nil, "bench", "artifacts", "--json",
		"--artifact-size", "2MiB", "--artifact-rounds", "2", "--artifact-big", "8MiB")
	if res.Code != 0 {
		t.Fatalf("weft bench artifacts exited %d: %s", res.Code, res.Stderr)
	}
	var out struct {
		Artifacts bench.ArtifactsResult `json:"artifacts"`
	}
	if err := json.Unmarshal([]byte(res.Stdout), &out); err != nil {
		t.Fatalf("weft bench artifacts --json printed %q: %v", res.Stdout, err)
	}
	r := out.Artifacts
	for name, tr := range map[string]bench.Transfer{"put": r.Put, "get": r.Get, "raw put": r.RawPut, "raw get": r.RawGet,
		"big put": r.BigPut, "big get": r.BigGet, "big raw put": r.BigRawPut, "big raw get": r.BigRawGet} {
		if tr.Rate <= 0 || tr.Growth < 0 {
			t.Errorf("%s = %+v, want a rate and no negative growth", name, tr)
		}
	}
	if r.Size != 2<<20 || r.Rounds != 2 || r.Big != 8<<20 || r.PutRatio <= 0 || r.GetRatio <= 0 || r.ServerGrowth < 0 || r.Wall <= 0 {
		t.Errorf("artifacts = %+v", r)
	}
	for _, line := range []string{"round 2/2 weft", "round 2/2 raw", "writing a 8 MiB file"} {
		if !strings.Contains(res.Stderr, line) {
			t.Errorf("progress on stderr lacks %q: %s", line, res.Stderr)
		}
	}

	bad := RunWeft(t, weftBin, t.TempDir(), nil, "bench", "artifacts", "--artifact-size", "lots")
	if bad.Code != 2 || !strings.Contains(bad.Stderr, "artifact-size") {
		t.Errorf("--artifact-size lots: exit %d, stderr %q; want 2 naming the flag", bad.Code, bad.Stderr)
	}
}
