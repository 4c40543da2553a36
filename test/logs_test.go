package test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/wire"
)

// weft logs prints a run's output by stage, one stage's with STAGE, as
// JSON with --json, and with -f follows a running stage until the run
// ends.
func TestLogsCommand(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Listen: true, Slots: 2})
	url := s.Bus.ClientURL()
	r, _ := s.Run(t, "name: logs\nstages:\n  - key: a\n    commands: [echo a-one, echo a-two]\n  - key: b\n    depends_on: [a]\n    commands: [echo b-one]\n")
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s", r.State)
	}
	dir := t.TempDir()
	all := RunWeft(t, weftBin, dir, nil, "logs", "--server", url, r.ID)
	want := "a | a-one\na | a-two\nb | b-one\n"
	if all.Code != 0 || all.Stdout != want {
		t.Fatalf("weft logs = %d %q (stderr %q), want %q", all.Code, all.Stdout, all.Stderr, want)
	}
	one := RunWeft(t, weftBin, dir, nil, "logs", "--server", url, "--json", r.ID, "a")
	var lines []client.Line
	for _, l := range strings.Split(strings.TrimSpace(one.Stdout), "\n") {
		var line client.Line
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("weft logs --json line %q: %v", l, err)
		}
		lines = append(lines, line)
	}
	if len(lines) != 2 || lines[0].Text != "a-one" || lines[1].Stage != "a" || lines[1].Attempt != 1 || lines[0].Time.IsZero() {
		t.Fatalf("weft logs --json RUN a = %+v, want stage a's two lines with attempt and time", lines)
	}
	if res := RunWeft(t, weftBin, dir, nil, "logs", "--server", url, "01NOSUCHRUN0000000000000000"); res.Code != 2 {
		t.Errorf("weft logs of an unknown run = %d, want 2", res.Code)
	}

	// -f: the history, then what comes, until the run ends.
	g := newGate(t)
	id := s.Submit(t, fmt.Sprintf("name: follow\nenv: {GATE: %q}\nstages:\n  - key: w\n    commands: [echo before, 'while [ ! -f \"$GATE\" ]; do sleep 0.02; done', echo after]\n", string(g)))
	waitFor(t, s, id, "running", stageIs("w", wire.StageRunning))
	f := startWeft(t, nil, "logs", "--server", url, "-f", id)
	f.waitLine(t, &f.stdout, 30*time.Second, "the line before the gate", func(l string) bool { return l == "w | before" })
	g.open(t)
	if code := f.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("weft logs -f exited %d", code)
	}
	if got := strings.Join(f.stdout.all(), "\n"); got != "w | before\nw | after" {
		t.Errorf("weft logs -f printed %q", got)
	}
}
