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
		{Trigger("acme/api.v2"), "weft.triggers.acme_api_v2"},
		{Trigger(""), "weft.triggers.local"},
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
	for _, s := range Streams() {
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
