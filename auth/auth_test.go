package auth

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/weft-ci/weft/subjects"
)

func TestMintedCredentialsCarryTheirGrant(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a, err := Init(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Init(dir)
	if err != nil || again.Account() != a.Account() {
		t.Fatalf("Init twice: %v; account %s then %s, want the same keys", err, a.Account(), again.Account())
	}
	g := Grant{Role: Agent, Name: "ci-7", Queues: []string{"main", "pr"}, Labels: map[string]string{"gpu": "A100"}}
	c, err := a.Mint(g, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	data, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "agent.creds")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	id, err := ReadCreds(path)
	if err != nil {
		t.Fatal(err)
	}
	if id.Grant.Role != Agent || id.Grant.Name != "ci-7" || !slices.Equal(id.Grant.Queues, g.Queues) || id.Grant.Labels["gpu"] != "A100" {
		t.Errorf("ReadCreds grant = %+v, want %+v (label values keep their case)", id.Grant, g)
	}
	if time.Until(id.Expires) > time.Hour || time.Until(id.Expires) < 59*time.Minute {
		t.Errorf("expires %s, want in an hour", id.Expires)
	}
	uc, err := jwt.DecodeUserClaims(c.JWT)
	if err != nil {
		t.Fatal(err)
	}
	if uc.Issuer != a.Account() {
		t.Errorf("issuer %s, want the account %s", uc.Issuer, a.Account())
	}
	pub, sub := uc.Permissions.Pub.Allow, uc.Permissions.Sub.Allow
	for _, want := range []string{
		"$JS.API.CONSUMER.MSG.NEXT.WEFT_JOBS.jobs_main_high",
		"$JS.API.CONSUMER.MSG.NEXT.WEFT_JOBS.jobs_pr_low",
		"$JS.ACK.WEFT_JOBS.jobs_main_normal.>",
	} {
		if !slices.Contains(pub, want) {
			t.Errorf("agent may not publish %s", want)
		}
	}
	for _, never := range []string{">", "weft.triggers.>", "$JS.API.CONSUMER.MSG.NEXT.WEFT_JOBS.jobs_default_high", "$JS.API.STREAM.INFO.KV_weft_runs"} {
		if slices.Contains(pub, never) {
			t.Errorf("agent may publish %s", never)
		}
	}
	if !slices.Contains(sub, InboxPrefix(id.User)+".>") || slices.Contains(sub, "_INBOX.>") {
		t.Errorf("agent subscriptions %v: want its own inbox only", sub)
	}
}

func TestBadGrantsAreRefused(t *testing.T) {
	a, err := Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for name, g := range map[string]Grant{
		"unknown role":       {Role: "root"},
		"agent, no queue":    {Role: Agent},
		"queue of a viewer":  {Role: Viewer, Queues: []string{"main"}},
		"bad queue":          {Role: Agent, Queues: []string{"Main!"}},
		"too many labels":    {Role: Agent, Queues: []string{"q"}, Labels: map[string]string{"a": "1", "b": "1", "c": "1", "d": "1", "e": "1"}},
		"domain with a dot":  {Role: Viewer, JSDomain: "a.b"},
		"label value spaces": {Role: Agent, Queues: []string{"q"}, Labels: map[string]string{"os": "linux x"}},
	} {
		if _, err := a.Mint(g, 0); !errors.Is(err, ErrInvalidGrant) {
			t.Errorf("%s: Mint = %v, want ErrInvalidGrant", name, err)
		}
	}
	if _, err := Load(t.TempDir()); !errors.Is(err, ErrNoAuthority) {
		t.Errorf("Load of an empty directory = %v, want ErrNoAuthority", err)
	}
}

// allows says whether p lets its user use subject, as the server decides:
// an empty allow list allows all, and a deny overrides an allow.
func allows(p jwt.Permission, subject string) bool {
	match := func(list jwt.StringList) bool {
		return slices.ContainsFunc(list, func(f string) bool { return server.SubjectMatchesFilter(subject, f) })
	}
	return (len(p.Allow) == 0 || match(p.Allow)) && !match(p.Deny)
}

// Operators (and dispatchers) record actions in the audit stream and
// read it; viewers read it; agents neither write nor read it, and
// trigger credentials cannot write it.
func TestOnlyOperatorsWriteTheAuditStream(t *testing.T) {
	a, err := Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	entry := subjects.Audit("intake.pause")
	// What an ordered consumer on the stream asks (weft audit).
	reads := []string{
		"$JS.API.STREAM.INFO." + subjects.AuditStream,
		"$JS.API.CONSUMER.CREATE." + subjects.AuditStream + ".oc_1." + entry,
		"$JS.API.CONSUMER.INFO." + subjects.AuditStream + ".oc_1",
		"$JS.API.CONSUMER.MSG.NEXT." + subjects.AuditStream + ".oc_1",
	}
	for _, tt := range []struct {
		g           Grant
		write, read bool
	}{
		{Grant{Role: Operator}, true, true},
		{Grant{Role: Dispatcher}, true, true},
		{Grant{Role: Viewer}, false, true},
		{Grant{Role: Trigger}, false, true},
		{Grant{Role: Agent, Queues: []string{"main"}}, false, false},
	} {
		c, err := a.Mint(tt.g, 0)
		if err != nil {
			t.Fatal(err)
		}
		uc, err := jwt.DecodeUserClaims(c.JWT)
		if err != nil {
			t.Fatal(err)
		}
		if got := allows(uc.Permissions.Pub, entry); got != tt.write {
			t.Errorf("%s may publish %s: %t, want %t", tt.g.Role, entry, got, tt.write)
		}
		for _, api := range reads {
			if got := allows(uc.Permissions.Pub, api); got != tt.read {
				t.Errorf("%s may publish %s (read the audit stream): %t, want %t", tt.g.Role, api, got, tt.read)
			}
		}
	}
}
