package subjects

import (
	"errors"
	"strings"
	"testing"
)

func TestParseTier(t *testing.T) {
	for _, tier := range Tiers {
		if got, err := ParseTier(string(tier)); got != tier || err != nil {
			t.Errorf("ParseTier(%q) = %q, %v, want %q", tier, got, err, tier)
		}
	}
	for _, bad := range []string{"", "urgent", "Critical", "normal "} {
		if _, err := ParseTier(bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ParseTier(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
}

func TestValidateQueue(t *testing.T) {
	for _, ok := range []string{"default", "pr", "cross-repo", "gpu_2", "0", strings.Repeat("a", 63)} {
		if err := ValidateQueue(ok); err != nil {
			t.Errorf("ValidateQueue(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "Main", "a.b", "a*", "a>", "-x", "a b", strings.Repeat("a", 64)} {
		if err := ValidateQueue(bad); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateQueue(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
}

func TestNames(t *testing.T) {
	tests := []struct{ got, want string }{
		{Job("pr", High), "weft.jobs.pr.high"},
		{WakeFor("pr", High), "weft.wake.pr.high"},
		{Wake("pr"), "weft.wake.pr.*"},
		{StageEvent("R", "build"), "weft.events.R.build"},
		{RunEvent("R"), "weft.events.R"},
		{Logs("R", "build"), "weft.logs.R.build"},
		{RunLogs("R"), "weft.logs.R.*"},
		{LogStage(Logs("R", "build")), "build"},
		{CancelRun(Cancel("R")), "R"},
		{PausedQueue(PauseKey("pr")), "pr"},
		{StatsName(StatsKey("backpressure_waited.pr")), "backpressure_waited.pr"},
		{Trigger("acme/api.v2"), "weft.triggers.acme_2fapi_2ev2"},
		{Trigger(""), "weft.triggers._"},
		{Cancel("R"), "weft.cancel.R"},
		{JobConsumer("cross-repo", Low), "jobs_cross-repo_low"},
		{JobMsgID("R", "build", 3), "R.build.3"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
	if a, b := DedupKey("delivery-1"), DedupKey("delivery-2"); a == b || len(a) != 32 {
		t.Errorf("DedupKey = %q, %q: want distinct 32-hex-digit keys", a, b)
	}
}

func TestJobStreamRepublishesToWakeSubjects(t *testing.T) {
	for _, s := range Streams(0) {
		if s.Name != JobsStream {
			continue
		}
		if s.Retention != WorkQueue || s.RepublishSource != AllJobs || s.RepublishDest != "weft.wake.>" {
			t.Errorf("jobs stream = %+v, want a work queue republishing %s to weft.wake.>", s, AllJobs)
		}
		return
	}
	t.Fatalf("no %s stream", JobsStream)
}

// RepoName refuses what RepoToken never makes.
func TestRepoNameRefusesForeignTokens(t *testing.T) {
	for _, tok := range []string{"", "a.b", "_2F", "_61", "_2", "a_zz"} {
		if name, ok := RepoName(tok); ok {
			t.Errorf("RepoName(%q) = %q, true; want false", tok, name)
		}
	}
}

// Names that differ only in '.', '/' or '_' are different repositories:
// their tokens (and so their WIP slots and groups) must differ.
func TestRepoTokenIsInjective(t *testing.T) {
	names := []string{"", "_", "local", "acme/api", "acme_api", "acme.api", "acme-api", "acme_2fapi", "Acme/api", "acme/api/", "a/b_c", "a_b/c", "日本/x"}
	seen := map[string]string{}
	for _, n := range names {
		tok := RepoToken(n)
		if other, ok := seen[tok]; ok {
			t.Errorf("RepoToken(%q) = RepoToken(%q) = %q", n, other, tok)
		}
		seen[tok] = n
		if strings.ContainsAny(tok, ".*> \t/") || tok == "" {
			t.Errorf("RepoToken(%q) = %q: not a single subject token", n, tok)
		}
		if got, ok := RepoName(tok); !ok || got != n {
			t.Errorf("RepoName(RepoToken(%q)) = %q, %v", n, got, ok)
		}
		if got := KeyRepoToken(LeaseKey(n, 2)); got != tok {
			t.Errorf("KeyRepoToken(LeaseKey(%q)) = %q, want %q", n, got, tok)
		}
	}
}
