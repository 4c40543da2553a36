package test

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// natsCLI runs the nats CLI (the tools module's, as the README says)
// against url and returns its output.
func natsCLI(t *testing.T, url string, args ...string) string {
	t.Helper()
	return natsCLIAs(t, url, "", args...)
}

// natsCLIAs runs the nats CLI against url with the credentials in creds
// ("" for none).
func natsCLIAs(t *testing.T, url, creds string, args ...string) string {
	t.Helper()
	// The first go tool run compiles natscli, which takes minutes.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	base := []string{"tool", "-modfile=" + filepath.Join(Root(), "tools", "go.mod"), "nats", "--server", url}
	if creds != "" {
		base = append(base, "--creds", creds)
	}
	cmd := exec.CommandContext(ctx, "go", append(base, args...)...)
	cmd.Dir = Root()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nats %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The README's nats CLI commands, with operator credentials against a
// server with auth on, show weft's streams, its queues' tier consumers
// with their depth, its runs and its artifacts.
func TestTheREADMEsNatsCommandsShowTheQueues(t *testing.T) {
	t.Parallel()
	f := startAuthFleet(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := bus.EnsureJobConsumers(ctx, f.s.Bus.JS, "main", 0, 0); err != nil {
		t.Fatal(err)
	}
	startWeft(t, nil, "dispatcher", "--server", f.url, "--creds", f.mint(t, "dispatcher"))
	id := f.s.Submit(t, "name: q\nstages:\n  - key: s\n    queue: main\n    commands: [true]\n", func(tr *wire.Trigger) { tr.Priority = subjects.High })
	waitFor(t, f.s, id, "queued on main", func(r *wire.Run) bool { return r.Stage("s").State == wire.StageQueued })

	checks := []struct {
		args []string
		want []string
	}{
		{[]string{"stream", "info", subjects.JobsStream}, []string{"weft.jobs.>", "WorkQueue"}},
		{[]string{"consumer", "ls", subjects.JobsStream}, []string{"jobs_main_critical", "jobs_main_high", "jobs_main_normal", "jobs_main_low"}},
		{[]string{"consumer", "info", subjects.JobsStream, "jobs_main_high"}, []string{"weft.jobs.main.high", "Unprocessed Messages: 1"}},
		{[]string{"kv", "ls", subjects.RunsBucket}, []string{id}},
		{[]string{"stream", "ls", "--names"}, []string{subjects.JobsStream, subjects.EventsStream, subjects.LogsStream, "OBJ_" + subjects.ArtifactsBucket}},
	}
	for _, c := range checks {
		out := natsCLIAs(t, f.url, f.creds, c.args...)
		for _, w := range c.want {
			if !strings.Contains(out, w) {
				t.Errorf("nats %s printed no %q:\n%s", strings.Join(c.args, " "), w, out)
			}
		}
	}
}
