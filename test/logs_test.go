package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/wire"
)

// weft logs prints a run's output by stage, one stage's with STAGE, as
// JSON with --json, and with -f and no STAGE follows the run until it
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
	if len(lines) != 2 || lines[0].Seq != 1 || lines[1].Seq != 1 {
		t.Errorf("weft logs --json RUN a = %+v, want both lines in batch 1", lines)
	}
	if res := RunWeft(t, weftBin, dir, nil, "logs", "--server", url, "01NOSUCHRUN0000000000000000"); res.Code != 2 {
		t.Errorf("weft logs of an unknown run = %d, want 2", res.Code)
	}
	for _, follow := range []string{"", "-f"} {
		args := []string{"logs", "--server", url, r.ID, "nosuchstage"}
		if follow != "" {
			args = append(args, follow)
		}
		if res := RunWeft(t, weftBin, dir, nil, args...); res.Code != 2 || !strings.Contains(res.Stderr, `no stage "nosuchstage"`) {
			t.Errorf("weft logs %s of an unknown stage = %d %q, want 2 naming the stage", follow, res.Code, res.Stderr)
		}
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

// Must show 6: weft logs -f RUN STAGE, started while the stage runs,
// prints its earlier lines, then its new lines as they are printed, and
// returns when that stage ends while another stage of the run still runs.
func TestLogsFollowEndsWithTheStage(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Listen: true, Slots: 2})
	first, second, other := newGate(t), newGate(t), newGate(t)
	id := s.Submit(t, fmt.Sprintf(`name: follow-stage
env: {FIRST: %q, SECOND: %q, OTHER: %q}
stages:
  - key: w
    commands: [echo before, 'while [ ! -f "$FIRST" ]; do sleep 0.02; done', echo after, 'while [ ! -f "$SECOND" ]; do sleep 0.02; done', echo last]
  - key: other
    commands: [echo other, 'while [ ! -f "$OTHER" ]; do sleep 0.02; done']
`, string(first), string(second), string(other)))
	waitFor(t, s, id, "running both stages", func(r *wire.Run) bool {
		return stageIs("w", wire.StageRunning)(r) && stageIs("other", wire.StageRunning)(r)
	})
	f := startWeft(t, nil, "logs", "--server", s.Bus.ClientURL(), "-f", id, "w")
	f.waitLine(t, &f.stdout, 30*time.Second, "the line printed before the follower started", func(l string) bool { return l == "w | before" })
	first.open(t)
	f.waitLine(t, &f.stdout, 30*time.Second, "the line printed after the first gate", func(l string) bool { return l == "w | after" })
	select {
	case <-f.done:
		t.Fatalf("weft logs -f exited before the stage ended; stdout %q", f.stdout.all())
	default:
	}
	second.open(t)
	if code := f.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("weft logs -f RUN w exited %d; stderr %q", code, f.stderr.all())
	}
	if got := strings.Join(f.stdout.all(), "\n"); got != "w | before\nw | after\nw | last" {
		t.Errorf("weft logs -f RUN w printed %q", got)
	}
	if r := runDoc(t, s, id); r.Stage("w").State != wire.StageSucceeded || r.Stage("other").State != wire.StageRunning {
		t.Errorf("when weft logs -f RUN w returned: w %s, other %s; want w succeeded and other still running", r.Stage("w").State, r.Stage("other").State)
	}
	other.open(t)
	waitFor(t, s, id, "succeeded", func(r *wire.Run) bool { return r.State == wire.RunSucceeded })
}

// weft logs -f RUN STAGE does not stop at a finish followed by a retry: it
// goes on with the retry's output until the stage's final finish.
func TestLogsFollowGoesOnThroughARetry(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Listen: true})
	g := newGate(t)
	id := s.Submit(t, fmt.Sprintf(`name: follow-retry
env: {GATE: %q}
stages:
  - key: s
    retry: {automatic: 1}
    commands:
      - echo attempt $WEFT_ATTEMPT
      - 'if [ "$WEFT_ATTEMPT" = 1 ]; then while [ ! -f "$GATE" ]; do sleep 0.02; done; exit 1; fi'
`, string(g)))
	f := startWeft(t, nil, "logs", "--server", s.Bus.ClientURL(), "-f", "--json", id, "s")
	f.waitLine(t, &f.stdout, 30*time.Second, "the first attempt's line", func(l string) bool { return strings.Contains(l, `"text":"attempt 1"`) })
	g.open(t)
	if code := f.wait(t, time.Minute); code != 0 {
		t.Fatalf("weft logs -f exited %d; stderr %q", code, f.stderr.all())
	}
	var got []string
	for _, l := range f.stdout.all() {
		var line client.Line
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("weft logs --json line %q: %v", l, err)
		}
		got = append(got, fmt.Sprintf("%d/%d %s", line.Attempt, line.Seq, line.Text))
	}
	if want := "1/1 attempt 1,2/1 attempt 2"; strings.Join(got, ",") != want {
		t.Errorf("weft logs -f printed %q, want %q (attempt/seq text)", strings.Join(got, ","), want)
	}
	if r := runDoc(t, s, id); r.Stage("s").State != wire.StageSucceeded || r.Stage("s").Attempt != 2 {
		t.Errorf("stage s %s on attempt %d, want succeeded on attempt 2", r.Stage("s").State, r.Stage("s").Attempt)
	}
}

// A stage printing more than the agent's --log-cap keeps its first
// lines, a note naming what was dropped and the cap, and its last lines,
// in batches numbered consecutively.
func TestLogsCap(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	f.agent(t, "capped", "--log-cap", "64KiB")
	const total = 10000 // lines "line 00000" to "line 09999", 11 bytes each
	r, _ := f.s.Run(t, "name: cap\nstages:\n  - key: s\n    commands: [\"seq -f 'line %05g' 0 9999\"]\n")
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s", r.State)
	}
	res := RunWeft(t, weftBin, t.TempDir(), nil, "logs", "--server", f.url, "--json", r.ID, "s")
	if res.Code != 0 {
		t.Fatalf("weft logs = %d, stderr %q", res.Code, res.Stderr)
	}
	var (
		head, tail []int
		notes      []string
		seq        uint64
	)
	for _, l := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
		var line client.Line
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("weft logs --json line %q: %v", l, err)
		}
		if line.Seq != seq && line.Seq != seq+1 {
			t.Fatalf("a line of batch %d after batch %d, want consecutive batches", line.Seq, seq)
		}
		seq = line.Seq
		var n int
		switch _, err := fmt.Sscanf(line.Text, "line %d", &n); {
		case line.Stream == "system":
			notes = append(notes, line.Text)
		case err != nil:
			t.Fatalf("unexpected line %q", line.Text)
		case len(notes) == 0:
			head = append(head, n)
		default:
			tail = append(tail, n)
		}
	}
	if len(notes) != 1 || len(head) == 0 || len(tail) == 0 {
		t.Fatalf("%d head lines, notes %q, %d tail lines; want head, one note, tail", len(head), notes, len(tail))
	}
	dropped := total - len(head) - len(tail)
	if want := fmt.Sprintf("log cap of 64 KiB (weft agent --log-cap): %d lines, %d bytes", dropped, dropped*11); !strings.Contains(notes[0], want) {
		t.Errorf("note %q, want it to say %q", notes[0], want)
	}
	for i, n := range head {
		if n != i {
			t.Fatalf("head line %d is line %d, want the first lines in order", i, n)
		}
	}
	for i, n := range tail {
		if want := total - len(tail) + i; n != want {
			t.Fatalf("tail line %d is line %d, want %d: the last lines in order", i, n, want)
		}
	}
	if kept := (len(head) + len(tail)) * 11; kept > 64<<10 || kept < 60<<10 {
		t.Errorf("kept %d bytes of output, want nearly the 64 KiB cap", kept)
	}
	if seq < 2 {
		t.Errorf("%d batches, want several", seq)
	}
	t.Logf("%d head lines, %d tail lines; note: %s", len(head), len(tail), notes[0])

	// weft run's local agent takes the flag too.
	dir := t.TempDir()
	file := filepath.Join(dir, "cap.yml")
	if err := os.WriteFile(file, []byte("name: cap\nstages:\n  - key: s\n    commands: [\"seq -f 'line %05g' 0 9999\"]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := RunWeft(t, weftBin, dir, nil, "run", "--executor", "process", "--log-cap", "64KiB", file)
	if want := fmt.Sprintf("s | weft: output over its log cap of 64 KiB (weft agent --log-cap): %d lines", dropped); run.Code != 0 || !strings.Contains(run.Stdout, want) || !strings.Contains(run.Stdout, "s | line 09999\n") {
		t.Errorf("weft run --log-cap 64KiB = %d, want 0 and %q then the last line in\n%s\nstderr %s", run.Code, want, run.Stdout[max(0, len(run.Stdout)-2000):], run.Stderr)
	}
	if res := RunWeft(t, weftBin, dir, nil, "run", "--log-cap", "1KiB", file); res.Code != 2 {
		t.Errorf("weft run --log-cap 1KiB = %d, want 2", res.Code)
	}
	if res := RunWeft(t, weftBin, t.TempDir(), nil, "agent", "--join", f.url, "--log-cap", "1KiB"); res.Code != 2 || !strings.Contains(res.Stderr, "log cap must be at least 64 KiB") {
		t.Errorf("weft agent --log-cap 1KiB = %d %q, want 2 naming the minimum", res.Code, res.Stderr)
	}
}
