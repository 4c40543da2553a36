package test

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/tokens"
	"github.com/weft-ci/weft/wire"
)

// Audit actions are dotted subject tokens; a filter is one action or a
// prefix ending in a dot; since is a duration back or a time.
func TestAuditActionsFiltersAndSince(t *testing.T) {
	for _, ok := range []string{"intake.pause", "runs.cancel", "run.priority", "dlq.replay", "a.b.c.d", "agent.drain-now"} {
		if err := subjects.ValidateAuditAction(ok); err != nil {
			t.Errorf("ValidateAuditAction(%q) = %v, want nil", ok, err)
		}
	}
	for _, bad := range []string{"", "pause", "intake.", ".pause", "intake..pause", "Intake.pause", "intake.*", "intake.>", "runs.cancel all", "a.b.c.d.e", "intake." + strings.Repeat("x", 33)} {
		if err := subjects.ValidateAuditAction(bad); !errors.Is(err, subjects.ErrInvalidName) {
			t.Errorf("ValidateAuditAction(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
	for in, want := range map[string]string{
		"":             "weft.audit.>",
		"runs.":        "weft.audit.runs.>",
		"runs.cancel":  "weft.audit.runs.cancel",
		"intake.pause": "weft.audit.intake.pause",
		"a.b.c.":       "weft.audit.a.b.c.>",
	} {
		if got, err := subjects.AuditFilter(in); err != nil || got != want {
			t.Errorf("AuditFilter(%q) = %q, %v, want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{".", "runs", "runs..", "Runs.", "a.b.c.d.", "runs.*"} {
		if got, err := subjects.AuditFilter(bad); !errors.Is(err, subjects.ErrInvalidName) {
			t.Errorf("AuditFilter(%q) = %q, %v, want ErrInvalidName", bad, got, err)
		}
	}
	if got := subjects.AuditAction(subjects.Audit("runs.cancel")); got != "runs.cancel" {
		t.Errorf("AuditAction(Audit(runs.cancel)) = %q", got)
	}
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"90m":                  now.Add(-90 * time.Minute),
		"24h":                  now.Add(-24 * time.Hour),
		"7d":                   now.Add(-7 * 24 * time.Hour),
		"0s":                   now,
		"2026-01-02T03:04:05Z": time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	} {
		if got, err := client.ParseSince(in, now); err != nil || !got.Equal(want) {
			t.Errorf("ParseSince(%q) = %v, %v, want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "yesterday", "-1h", "-2d", "1w", "2026-01-02", "99999999999d"} {
		if got, err := client.ParseSince(bad, now); !errors.Is(err, client.ErrInvalidAudit) {
			t.Errorf("ParseSince(%q) = %v, %v, want ErrInvalidAudit", bad, got, err)
		}
	}
	year := 365 * 24 * time.Hour
	for keep, want := range map[time.Duration]time.Duration{time.Hour: year, subjects.DefaultRetention: year, 2 * year: 2 * year} {
		if got := subjects.AuditRetention(keep); got != want {
			t.Errorf("AuditRetention(%v) = %v, want %v", keep, got, want)
		}
	}
}

// WEFT_AUDIT is provisioned with the other streams: limits retention on
// file, for a year at least and as long as runs when they are kept
// longer, and in as many copies as the others on a cluster.
func TestTheAuditStreamIsProvisioned(t *testing.T) {
	t.Parallel()
	b := Bus(t)
	ctx := t.Context()
	check := func(js jetstream.JetStream, maxAge time.Duration, replicas int) {
		t.Helper()
		s, err := js.Stream(ctx, subjects.AuditStream)
		if err != nil {
			t.Fatalf("stream %s: %v", subjects.AuditStream, err)
		}
		cfg := s.CachedInfo().Config
		if cfg.Retention != jetstream.LimitsPolicy || cfg.Storage != jetstream.FileStorage || !slices.Equal(cfg.Subjects, []string{"weft.audit.>"}) ||
			cfg.MaxAge != maxAge || cfg.Replicas != replicas || cfg.Duplicates != 2*time.Minute {
			t.Errorf("%s = retention %v, storage %v, subjects %v, max age %v, %d replicas, duplicates %v; want limits, file, weft.audit.>, %v, %d, 2m",
				subjects.AuditStream, cfg.Retention, cfg.Storage, cfg.Subjects, cfg.MaxAge, cfg.Replicas, cfg.Duplicates, maxAge, replicas)
		}
	}
	check(b.JS, subjects.MinAuditRetention, 1)
	longer := 2 * subjects.MinAuditRetention
	if err := bus.Provision(ctx, b.JS, longer); err != nil {
		t.Fatal(err)
	}
	check(b.JS, longer, 1)
	c := StartCluster(t, 3) // bus.ProvisionReplicated with 3 copies
	check(c.Member(0).JS, subjects.MinAuditRetention, 3)
}

// Record stores an entry once per id, filling its id and time; AuditLog
// selects by action, prefix, actor and time, and keeps the newest.
func TestRecordAndAuditLog(t *testing.T) {
	t.Parallel()
	b := Bus(t)
	ctx := t.Context()
	for _, bad := range []wire.AuditEntry{{Actor: "a", Action: "pause"}, {Actor: "a", Action: "runs.>"}, {Action: "runs.cancel"}} {
		if err := client.Record(ctx, b.JS, bad); !errors.Is(err, client.ErrInvalidAudit) {
			t.Errorf("Record(%+v) = %v, want ErrInvalidAudit", bad, err)
		}
	}
	first := wire.AuditEntry{ID: "01AUDIT0000000000000000001", Actor: "alice", Via: wire.AuditViaCLI, Action: "intake.pause", Count: 3}
	for range 2 {
		if err := client.Record(ctx, b.JS, first); err != nil {
			t.Fatal(err)
		}
	}
	before := time.Now()
	for _, e := range []wire.AuditEntry{
		{Actor: "bob", Via: wire.AuditViaAPI, Action: "runs.cancel", Filter: map[string]string{"repo": "acme/api", "state": "queued"}, Count: 12, Detail: "bad deploy"},
		{Actor: "alice", Via: wire.AuditViaCLI, Action: "runs.requeue", Count: 2},
		{Actor: "alice", Via: wire.AuditViaCLI, Action: "run.priority", Target: "01RUN", Count: 1, Detail: "critical"},
	} {
		if err := client.Record(ctx, b.JS, e); err != nil {
			t.Fatal(err)
		}
	}
	actions := func(q client.AuditQuery) []string {
		t.Helper()
		es, err := client.AuditLog(ctx, b.JS, q)
		if err != nil {
			t.Fatalf("AuditLog(%+v): %v", q, err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.Action)
		}
		return out
	}
	for _, tt := range []struct {
		q    client.AuditQuery
		want []string
	}{
		{client.AuditQuery{}, []string{"intake.pause", "runs.cancel", "runs.requeue", "run.priority"}},
		{client.AuditQuery{Action: "runs."}, []string{"runs.cancel", "runs.requeue"}},
		{client.AuditQuery{Action: "run."}, []string{"run.priority"}},
		{client.AuditQuery{Action: "runs.cancel"}, []string{"runs.cancel"}},
		{client.AuditQuery{Actor: "alice"}, []string{"intake.pause", "runs.requeue", "run.priority"}},
		{client.AuditQuery{Actor: "alice", Limit: 2}, []string{"runs.requeue", "run.priority"}},
		{client.AuditQuery{Limit: 1}, []string{"run.priority"}},
		{client.AuditQuery{Since: before}, []string{"runs.cancel", "runs.requeue", "run.priority"}},
		{client.AuditQuery{Since: time.Now().Add(time.Hour)}, nil},
		{client.AuditQuery{Action: "queue."}, nil},
	} {
		if got := actions(tt.q); !slices.Equal(got, tt.want) {
			t.Errorf("AuditLog(%+v) = %v, want %v", tt.q, got, tt.want)
		}
	}
	es, err := client.AuditLog(ctx, b.JS, client.AuditQuery{Action: "runs.cancel"})
	if err != nil || len(es) != 1 {
		t.Fatalf("AuditLog runs.cancel = %v, %v", es, err)
	}
	if e := es[0]; len(e.ID) != 26 || e.Time.Before(before) || e.Time.After(time.Now()) || e.Filter["repo"] != "acme/api" || e.Count != 12 || e.Via != "api" {
		t.Errorf("recorded %+v: want a ULID, the time it was recorded and the entry as given", e)
	}
	for _, q := range []client.AuditQuery{{Action: "runs"}, {Limit: -1}} {
		if _, err := client.AuditLog(ctx, b.JS, q); !errors.Is(err, client.ErrInvalidAudit) {
			t.Errorf("AuditLog(%+v) = %v, want ErrInvalidAudit", q, err)
		}
	}
}

// auditLines parses weft audit --json: one entry a line.
func auditLines(t *testing.T, out string) []wire.AuditEntry {
	t.Helper()
	var es []wire.AuditEntry
	for line := range strings.Lines(out) {
		var e wire.AuditEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("weft audit --json line %q: %v", line, err)
		}
		es = append(es, e)
	}
	return es
}

// Issue 14: the CLI records every operator action after it succeeded
// (who, what, target, count) and weft audit lists them in order, as
// columns or JSON lines, filtered by action, actor, time and number.
func TestWeftAuditListsTheOperatorsActions(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"USER=audit-e2e", "WEFT_SERVER=" + f.url}
	actor := "audit-e2e@" + host
	weft := func(want int, args ...string) Result {
		t.Helper()
		res := RunWeft(t, weftBin, "", env, args...)
		if res.Code != want {
			t.Fatalf("weft %s: exit %d, want %d\n%s%s", strings.Join(args, " "), res.Code, want, res.Stdout, res.Stderr)
		}
		return res
	}
	// A failed action is not recorded: no dispatcher has made the
	// triggers consumer yet.
	weft(3, "intake", "pause")
	if out := weft(0, "audit", "--json").Stdout; out != "" {
		t.Fatalf("a failed intake pause was recorded: %s", out)
	}
	f.dispatcher(t)

	weft(0, "intake", "pause")
	for i := range 2 {
		tr := wire.Trigger{ID: ulidString(), Repo: "acme/audit", File: "p.yml", Time: time.Now(),
			Pipeline: "name: a\nstages:\n  - key: s\n    commands: [echo " + string(rune('a'+i)) + "]\n"}
		data, _ := json.Marshal(tr)
		if _, err := f.s.Bus.JS.Publish(t.Context(), subjects.Trigger(tr.Repo), data, jetstream.WithMsgID(tr.ID)); err != nil {
			t.Fatal(err)
		}
	}
	weft(0, "intake", "resume")
	weft(0, "queue", "pause", "--reason", "registry maintenance", "main")
	weft(0, "intake", "status") // reads, records nothing
	agent := f.agent(t, "audit-agent")
	weft(0, "agent", "drain", "audit-agent")
	agent.wait(t, 30*time.Second)

	es := auditLines(t, weft(0, "audit", "--json").Stdout)
	type want struct {
		action, target string
		count          int
		detail         string
	}
	wants := []want{{"intake.pause", "", 0, ""}, {"intake.resume", "", 2, ""}, {"queue.pause", "main", 1, "registry maintenance"}, {"agent.drain", "audit-agent", 1, "0 stages running"}}
	if len(es) != len(wants) {
		t.Fatalf("weft audit --json listed %d entries, want %d: %+v", len(es), len(wants), es)
	}
	for i, w := range wants {
		e := es[i]
		if e.Action != w.action || e.Target != w.target || e.Count != w.count || e.Detail != w.detail || e.Actor != actor || e.Via != "cli" || e.ID == "" {
			t.Errorf("entry %d = %+v, want %s of %q, count %d, detail %q, by %s via cli", i, e, w.action, w.target, w.count, w.detail, actor)
		}
		if i > 0 && e.Time.Before(es[i-1].Time) {
			t.Errorf("entry %d at %v before entry %d at %v: want oldest first", i, e.Time, i-1, es[i-1].Time)
		}
	}

	if got := auditLines(t, weft(0, "audit", "--json", "--action", "intake.").Stdout); len(got) != 2 || got[0].Action != "intake.pause" || got[1].Action != "intake.resume" {
		t.Errorf("weft audit --action intake. = %+v, want the pause and the resume", got)
	}
	if got := auditLines(t, weft(0, "audit", "--json", "--action", "queue.pause").Stdout); len(got) != 1 || got[0].Target != "main" {
		t.Errorf("weft audit --action queue.pause = %+v, want the queue's pause", got)
	}
	if got := auditLines(t, weft(0, "audit", "--json", "--limit", "1").Stdout); len(got) != 1 || got[0].Action != "agent.drain" {
		t.Errorf("weft audit --limit 1 = %+v, want the newest entry", got)
	}
	if got := auditLines(t, weft(0, "audit", "--json", "--since", "1h", "--actor", actor).Stdout); len(got) != len(wants) {
		t.Errorf("weft audit --since 1h --actor %s = %d entries, want %d", actor, len(got), len(wants))
	}
	if out := weft(0, "audit", "--json", "--actor", "somebody-else").Stdout; out != "" {
		t.Errorf("weft audit --actor somebody-else printed %q, want nothing", out)
	}
	if out := weft(0, "audit", "--json", "--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)).Stdout; out != "" {
		t.Errorf("weft audit --since an hour ahead printed %q, want nothing", out)
	}
	for _, bad := range [][]string{{"--action", "Intake"}, {"--action", "intake"}, {"--since", "yesterday"}, {"--limit", "0"}} {
		if res := weft(2, append([]string{"audit"}, bad...)...); !strings.Contains(res.Stderr, bad[0]) {
			t.Errorf("weft audit %v: %q, want it to name %s", bad, res.Stderr, bad[0])
		}
	}

	// The columns: time, actor, via, action, target, count, filter,
	// detail; "-" for none.
	lines := strings.Split(strings.TrimSpace(weft(0, "audit", "--action", "queue.").Stdout), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "TIME ACTOR VIA ACTION TARGET COUNT FILTER DETAIL" {
		t.Fatalf("weft audit --action queue. printed:\n%s\nwant a header and a line", strings.Join(lines, "\n"))
	}
	cols := strings.Fields(lines[1])
	if len(cols) != 9 || cols[1] != actor || cols[2] != "cli" || cols[3] != "queue.pause" || cols[4] != "main" || cols[5] != "1" || cols[6] != "-" || strings.Join(cols[7:], " ") != "registry maintenance" {
		t.Errorf("weft audit line %q: want its columns", lines[1])
	}
	if ts, err := time.Parse(time.RFC3339, cols[0]); err != nil || !strings.HasSuffix(cols[0], "Z") || !ts.Equal(es[2].Time.Truncate(time.Second)) {
		t.Errorf("weft audit time %q (%v): want %v in RFC 3339, UTC", cols[0], err, es[2].Time)
	}
	if got := strings.Index(lines[1], "queue.pause"); got != strings.Index(lines[0], "ACTION") {
		t.Errorf("weft audit columns are not aligned:\n%s", strings.Join(lines, "\n"))
	}
	// A bulk action's filter, sorted, and a detail that would break a
	// line, quoted.
	bulk := wire.AuditEntry{Actor: "bob", Via: wire.AuditViaAPI, Action: "runs.cancel", Count: 12,
		Filter: map[string]string{"state": "queued,running", "repo": "acme/api"}, Detail: "bad\ndeploy"}
	if err := client.Record(t.Context(), f.s.Bus.JS, bulk); err != nil {
		t.Fatal(err)
	}
	out := strings.TrimSpace(weft(0, "audit", "--action", "runs.").Stdout)
	if lines := strings.Split(out, "\n"); len(lines) != 2 || !strings.HasSuffix(strings.Join(strings.Fields(lines[1]), " "), ` bob api runs.cancel - 12 repo=acme/api state=queued,running "bad\ndeploy"`) {
		t.Errorf("weft audit --action runs. printed:\n%s\nwant bob's cancel with its filter sorted and its detail quoted", out)
	}
}

// The API records its operators' actions with the token's name, and
// serves the audit stream to viewers at GET /api/audit.
func TestTheAPIRecordsActionsInTheAudit(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true, NoDispatcher: true})
	a := startAPI(t, s)
	for _, path := range []string{"/api/queues/{queue}/pause", "/api/queues/{queue}/resume"} {
		if ans := a.call(t, tokens.Operator, "POST", path, strings.Replace(path, "{queue}", "deploy", 1), map[string]string{}); ans.code != 200 {
			t.Fatalf("POST %s: %d %s", path, ans.code, ans.raw)
		}
	}
	if ans := a.call(t, tokens.Operator, "POST", "/api/queues/{queue}/pause", "/api/queues/Bad!/pause", nil); ans.code != 400 {
		t.Fatalf("pause of a bad queue: %d %s", ans.code, ans.raw)
	}
	ans := a.call(t, tokens.Viewer, "GET", "/api/audit", "/api/audit?"+url.Values{"action": {"queue."}, "since": {"1h"}, "limit": {"10"}}.Encode(), nil)
	var list struct {
		Entries []wire.AuditEntry `json:"entries"`
	}
	if err := json.Unmarshal([]byte(ans.raw), &list); ans.code != 200 || err != nil {
		t.Fatalf("GET /api/audit: %d %s (%v)", ans.code, ans.raw, err)
	}
	if len(list.Entries) != 2 {
		t.Fatalf("GET /api/audit listed %+v, want the pause and the resume (not the refused pause)", list.Entries)
	}
	for i, action := range []string{"queue.pause", "queue.resume"} {
		e := list.Entries[i]
		if e.Action != action || e.Target != "deploy" || e.Actor != "test-"+string(tokens.Operator) || e.Via != "api" || e.Count != 1 {
			t.Errorf("entry %d = %+v, want %s of deploy by test-operator via api", i, e, action)
		}
	}
	if e := list.Entries[0]; e.Detail != "paused by test-operator" {
		t.Errorf("pause detail %q, want the reason", e.Detail)
	}
	ans = a.call(t, tokens.Viewer, "GET", "/api/audit", "/api/audit?limit=1", nil)
	if !strings.Contains(ans.raw, "queue.resume") || strings.Contains(ans.raw, "queue.pause") {
		t.Errorf("GET /api/audit?limit=1: %s, want the newest entry alone", ans.raw)
	}
	for _, q := range []string{"action=Queue.", "since=yesterday", "limit=0", "limit=1001"} {
		if ans := a.call(t, tokens.Viewer, "GET", "/api/audit", "/api/audit?"+q, nil); ans.code != 400 {
			t.Errorf("GET /api/audit?%s: %d %s, want 400", q, ans.code, ans.raw)
		}
	}
	if ans := a.call(t, "", "GET", "/api/audit", "/api/audit", nil); ans.code != 401 {
		t.Errorf("GET /api/audit without a token: %d, want 401", ans.code)
	}
}

// On a server with auth on, an operator's actions are recorded with the
// name in its credentials, a viewer reads the audit stream, and an agent
// may neither publish to it nor read it.
func TestAnAgentCannotWriteTheAuditStream(t *testing.T) {
	t.Parallel()
	f := startAuthFleet(t)
	alice := f.mint(t, "operator", "--name", "alice")
	if res := RunWeft(t, weftBin, "", nil, "queue", "pause", "--server", f.url, "--creds", alice, "deploy"); res.Code != 0 {
		t.Fatalf("weft queue pause as alice: exit %d\n%s", res.Code, res.Stderr)
	}
	viewer := f.mint(t, "viewer")
	res := RunWeft(t, weftBin, "", nil, "audit", "--json", "--server", f.url, "--creds", viewer)
	if res.Code != 0 {
		t.Fatalf("weft audit as a viewer: exit %d\n%s", res.Code, res.Stderr)
	}
	if es := auditLines(t, res.Stdout); len(es) != 1 || es[0].Actor != "alice" || es[0].Action != "queue.pause" || es[0].Target != "deploy" {
		t.Errorf("weft audit as a viewer = %+v, want alice's pause of deploy", es)
	}

	agentCreds := f.mint(t, "agent", "--queue", "main")
	nc, v := connectAs(t, f.url, agentCreds)
	forged, _ := json.Marshal(wire.AuditEntry{Actor: "alice", Via: "cli", Action: "queue.resume", Target: "deploy", Count: 1})
	subject := subjects.Audit("queue.resume")
	if err := nc.Publish(subject, forged); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	v.denied(t, "an agent's audit entry", "Publish", subject)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := js.Publish(short, subject, forged); err == nil {
		t.Errorf("an agent's JetStream publish to %s was acknowledged", subject)
	}
	ctx, cancelRead := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancelRead()
	if es, err := client.AuditLog(ctx, f.s.Bus.JS, client.AuditQuery{}); err != nil || len(es) != 1 {
		t.Errorf("audit stream after the agent's tries: %+v, %v; want alice's entry alone", es, err)
	}
	if res := RunWeft(t, weftBin, "", nil, "audit", "--server", f.url, "--creds", agentCreds); res.Code == 0 {
		t.Errorf("weft audit with an agent's credentials: exit 0, want a refusal\n%s", res.Stdout)
	}
}
