package test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// event is one line of weft run --json.
type event struct {
	Type  string         `json:"type"`
	RunID string         `json:"run_id"`
	Stage *wire.StageRun `json:"stage"`
	Log   *client.Line   `json:"log"`
	Run   *wire.Run      `json:"run"`
}

// decodeEvents parses the JSON lines of weft run --json.
func decodeEvents(t testing.TB, stdout string) []event {
	t.Helper()
	var evs []event
	for line := range strings.Lines(stdout) {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var ev event
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("stdout line %q is not a JSON event: %v", line, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// runID returns the run id of the run_started event, which must be first.
func runID(t testing.TB, evs []event) string {
	t.Helper()
	if len(evs) == 0 || evs[0].Type != "run_started" || evs[0].RunID == "" {
		t.Fatalf("first event is not run_started with a run id: %+v", evs)
	}
	return evs[0].RunID
}

// finalRun returns the run document of the last event, which must be the
// "run" event.
func finalRun(t testing.TB, evs []event) *wire.Run {
	t.Helper()
	if len(evs) == 0 {
		t.Fatal("no events on stdout")
	}
	last := evs[len(evs)-1]
	if last.Type != "run" || last.Run == nil {
		t.Fatalf("last event is %q, want a run event with the run document", last.Type)
	}
	return last.Run
}

// stage returns the stage key of run r, failing the test when it is missing.
func stage(t testing.TB, r *wire.Run, key string) *wire.StageRun {
	t.Helper()
	s := r.Stage(key)
	if s == nil {
		t.Fatalf("run %s has no stage %q", r.ID, key)
	}
	return s
}

// stageLogs returns the output lines of each stage, in order.
func stageLogs(evs []event) map[string][]string {
	logs := map[string][]string{}
	for _, ev := range evs {
		if ev.Type == "log" && ev.Log != nil {
			logs[ev.Log.Stage] = append(logs[ev.Log.Stage], ev.Log.Text)
		}
	}
	return logs
}

// assertEmptyDir fails the test when dir holds anything.
func assertEmptyDir(t testing.TB, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	if len(entries) > 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		t.Errorf("TMPDIR %s holds %v after weft exited, want it empty", dir, names)
	}
}

// lineLog collects the lines of one output stream of a running process.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		l.mu.Lock()
		l.lines = append(l.lines, sc.Text())
		l.mu.Unlock()
	}
}

func (l *lineLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.lines)
}

func (l *lineLog) find(match func(string) bool) (string, bool) {
	for _, line := range l.all() {
		if match(line) {
			return line, true
		}
	}
	return "", false
}

// proc is a weft process started in the background.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr lineLog
	done           chan struct{} // closed when the process exited and its output was read
	err            error         // cmd.Wait's result, set before done is closed
}

// startWeft starts weft with args and extra environment variables, and
// kills it when the test ends if it is still running.
func startWeft(t testing.TB, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(weftBin, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start weft %v: %v", args, err)
	}
	var readers sync.WaitGroup
	readers.Go(func() { p.stdout.read(stdout) })
	readers.Go(func() { p.stderr.read(stderr) })
	go func() {
		readers.Wait()
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// waitLine waits up to d for a line of l that match accepts and returns it.
func (p *proc) waitLine(t testing.TB, l *lineLog, d time.Duration, what string, match func(string) bool) string {
	t.Helper()
	var line string
	if !Eventually(d, func() bool {
		var ok bool
		line, ok = l.find(match)
		return ok
	}) {
		t.Fatalf("no %s within %v\nstdout:\n%s\nstderr:\n%s", what, d,
			strings.Join(p.stdout.all(), "\n"), strings.Join(p.stderr.all(), "\n"))
	}
	return line
}

// wait waits up to d for the process to exit and returns its exit code.
func (p *proc) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(d):
		t.Fatalf("weft did not exit within %v\nstdout:\n%s\nstderr:\n%s", d,
			strings.Join(p.stdout.all(), "\n"), strings.Join(p.stderr.all(), "\n"))
	}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
		return 0
	case errors.As(p.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("weft: %v", p.err)
	return -1
}

func TestRunDiamond(t *testing.T) {
	t.Parallel()

	t.Run("json", func(t *testing.T) {
		t.Parallel()
		res := RunWeft(t, weftBin, "", nil, "run", "--slots", "2", "--json", "testdata/diamond-sleep.yml")
		if res.Code != 0 {
			t.Fatalf("weft run diamond-sleep.yml exited %d, want 0\nstdout:\n%s\nstderr:\n%s", res.Code, res.Stdout, res.Stderr)
		}
		evs := decodeEvents(t, res.Stdout)
		r := finalRun(t, evs)
		if r.State != wire.RunSucceeded {
			t.Errorf("run state = %q, want %q", r.State, wire.RunSucceeded)
		}
		for _, s := range r.Stages {
			if s.State != wire.StageSucceeded {
				t.Errorf("stage %s state = %q, want %q", s.Key, s.State, wire.StageSucceeded)
			}
			if s.Started.IsZero() || s.Finished.IsZero() {
				t.Errorf("stage %s has started %v, finished %v; want both recorded", s.Key, s.Started, s.Finished)
			}
		}
		for _, st := range r.Pipeline.Stages {
			s := stage(t, r, st.Key)
			for _, dep := range st.DependsOn {
				d := stage(t, r, dep)
				if s.Started.Before(d.Finished) {
					t.Errorf("stage %s started at %v, before its dependency %s finished at %v",
						s.Key, s.Started.Format(time.RFC3339Nano), dep, d.Finished.Format(time.RFC3339Nano))
				}
			}
		}
		lint, test := stage(t, r, "lint"), stage(t, r, "test")
		if !lint.Started.Before(test.Finished) || !test.Started.Before(lint.Finished) {
			t.Errorf("with --slots 2, lint [%v, %v] and test [%v, %v] did not overlap",
				lint.Started.Format(time.RFC3339Nano), lint.Finished.Format(time.RFC3339Nano),
				test.Started.Format(time.RFC3339Nano), test.Finished.Format(time.RFC3339Nano))
		}
		logs := stageLogs(evs)
		for key, want := range map[string]string{"build": "built", "lint": "linted", "test": "tested", "package": "packaged"} {
			if !slices.Contains(logs[key], want) {
				t.Errorf("log lines of %s = %q, want to contain %q", key, logs[key], want)
			}
		}
	})

	t.Run("text", func(t *testing.T) {
		t.Parallel()
		file := filepath.Join(Root(), "examples", "diamond.yml")
		res := RunWeft(t, weftBin, "", nil, "run", "--slots", "2", file)
		if res.Code != 0 {
			t.Fatalf("weft run %s exited %d, want 0\nstdout:\n%s\nstderr:\n%s", file, res.Code, res.Stdout, res.Stderr)
		}
		// Output lines are "KEY<padding> | TEXT".
		outputLine := regexp.MustCompile(`^([a-z0-9_-]+) *\| (.*)$`)
		got := map[string][]string{}
		for line := range strings.Lines(res.Stdout) {
			if m := outputLine.FindStringSubmatch(strings.TrimRight(line, "\n")); m != nil {
				got[m[1]] = append(got[m[1]], m[2])
			}
		}
		for key, want := range map[string]string{
			"build":   "hello from build of diamond",
			"lint":    "lint ok",
			"test":    "tests passed",
			"package": "app.tar",
		} {
			if !slices.ContainsFunc(got[key], func(s string) bool { return strings.Contains(s, want) }) {
				t.Errorf("stdout has no line %q containing %q; lines of %s: %q\nstdout:\n%s", key+" | ", want, key, got[key], res.Stdout)
			}
		}
	})
}

func TestRunFailing(t *testing.T) {
	t.Parallel()

	t.Run("failing", func(t *testing.T) {
		t.Parallel()
		file := filepath.Join(Root(), "examples", "failing.yml")
		res := RunWeft(t, weftBin, "", nil, "run", "--json", file)
		if res.Code != 1 {
			t.Errorf("weft run %s exited %d, want 1\nstderr:\n%s", file, res.Code, res.Stderr)
		}
		r := finalRun(t, decodeEvents(t, res.Stdout))
		if r.State != wire.RunFailed {
			t.Errorf("run state = %q, want %q", r.State, wire.RunFailed)
		}
		if s := stage(t, r, "build"); s.State != wire.StageSucceeded {
			t.Errorf("build state = %q, want %q", s.State, wire.StageSucceeded)
		}
		if s := stage(t, r, "test"); s.State != wire.StageFailed || s.ExitCode != 3 || s.Category != wire.CategoryCommand {
			t.Errorf("test = %s, exit %d, category %q; want %s, exit 3, category %q",
				s.State, s.ExitCode, s.Category, wire.StageFailed, wire.CategoryCommand)
		}
		if s := stage(t, r, "deploy"); s.State != wire.StageSkipped {
			t.Errorf("deploy state = %q, want %q", s.State, wire.StageSkipped)
		}
		if s := stage(t, r, "flaky-lint"); s.State != wire.StageFailed {
			t.Errorf("flaky-lint state = %q, want %q", s.State, wire.StageFailed)
		}
	})

	t.Run("allow_failure", func(t *testing.T) {
		t.Parallel()
		res := RunWeft(t, weftBin, "", nil, "run", "--json", "testdata/allow-failure.yml")
		if res.Code != 0 {
			t.Errorf("weft run allow-failure.yml exited %d, want 0\nstderr:\n%s", res.Code, res.Stderr)
		}
		r := finalRun(t, decodeEvents(t, res.Stdout))
		if r.State != wire.RunSucceeded {
			t.Errorf("run state = %q, want %q", r.State, wire.RunSucceeded)
		}
		if s := stage(t, r, "lint"); s.State != wire.StageFailed || s.ExitCode != 1 || s.Category != wire.CategoryCommand {
			t.Errorf("lint = %s, exit %d, category %q; want %s, exit 1, category %q",
				s.State, s.ExitCode, s.Category, wire.StageFailed, wire.CategoryCommand)
		}
		if s := stage(t, r, "report"); s.State != wire.StageSucceeded {
			t.Errorf("report (depends on the allowed failure) state = %q, want %q", s.State, wire.StageSucceeded)
		}
	})
}

// badPipelines are the files of testdata/bad, one per class of error, with
// where the error must be reported. col 0 means any column: YAML syntax
// errors come from yaml.v3, whose messages carry a line but no column.
var badPipelines = []struct {
	file      string
	line, col int
	field     string
	msg       string // a substring of the message; optional
}{
	{file: "unknown-key.yml", line: 5, col: 5, field: "stages[0].comands", msg: "unknown field"},
	{file: "missing-field.yml", line: 3, col: 5, field: "stages[0].commands", msg: "missing"},
	{file: "bad-key.yml", line: 3, col: 10, field: "stages[0].key", msg: "Build Step"},
	{file: "duplicate-key.yml", line: 5, col: 10, field: "stages[1].key", msg: "duplicate"},
	{file: "unknown-dep.yml", line: 6, col: 18, field: "stages[1].depends_on[0]", msg: "biuld"},
	{file: "cycle.yml", line: 7, col: 18, field: "stages[1].depends_on[0]", msg: "b -> a -> c -> b"},
	{file: "bad-duration.yml", line: 4, col: 14, field: "stages[0].timeout", msg: "10 minutes"},
	{file: "bad-priority.yml", line: 2, col: 11, field: "priority", msg: "urgent"},
	{file: "bad-queue.yml", line: 4, col: 12, field: "stages[0].queue", msg: "Big.Machines"},
	{file: "bad-env-name.yml", line: 3, col: 3, field: "env.1FOO"},
	{file: "wrong-type.yml", line: 5, col: 20, field: "stages[0].allow_failure"},
	// The misindented key on line 4 is the error.
	{file: "syntax-error.yml", line: 4, col: 0, field: "(file)"},
	{file: "empty.yml", line: 1, col: 1, field: "(file)", msg: "empty"},
}

func TestBadPipelines(t *testing.T) {
	t.Parallel()

	t.Run("validate", func(t *testing.T) {
		t.Parallel()
		for _, tc := range badPipelines {
			t.Run(tc.file, func(t *testing.T) {
				t.Parallel()
				file := "testdata/bad/" + tc.file
				res := RunWeft(t, weftBin, "", nil, "validate", file)
				if res.Code != 2 {
					t.Errorf("weft validate %s exited %d, want 2", file, res.Code)
				}
				col := fmt.Sprint(tc.col)
				if tc.col == 0 {
					col = `[0-9]+`
				}
				want := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(fmt.Sprintf("%s:%d:", file, tc.line)) + col +
					regexp.QuoteMeta(": "+tc.field+": ") + `.*` + regexp.QuoteMeta(tc.msg))
				if !want.MatchString(res.Stderr) {
					wantCol := fmt.Sprint(tc.col)
					if tc.col == 0 {
						wantCol = "COL"
					}
					t.Errorf("weft validate %s: stderr has no line %s:%d:%s: %s: ...%s\nstderr:\n%s",
						file, file, tc.line, wantCol, tc.field, tc.msg, res.Stderr)
				}
			})
		}
	})

	t.Run("run creates no run", func(t *testing.T) {
		t.Parallel()
		state := t.TempDir()
		if res := RunWeft(t, weftBin, "", nil, "run", "--state", state, "testdata/one.yml"); res.Code != 0 {
			t.Fatalf("weft run --state %s one.yml exited %d, want 0\nstdout:\n%s\nstderr:\n%s", state, res.Code, res.Stdout, res.Stderr)
		}
		for _, tc := range badPipelines {
			file := "testdata/bad/" + tc.file
			res := RunWeft(t, weftBin, "", nil, "run", "--state", state, file)
			if res.Code != 2 {
				t.Errorf("weft run --state %s %s exited %d, want 2\nstdout:\n%s\nstderr:\n%s", state, file, res.Code, res.Stdout, res.Stderr)
			}
			if !strings.Contains(res.Stderr, file+":") {
				t.Errorf("weft run %s: stderr does not name %s:\n%s", file, file, res.Stderr)
			}
		}

		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := bus.Open(ctx, bus.Config{StoreDir: filepath.Join(state, "jetstream"), Logger: Logger(t)})
		if err != nil {
			t.Fatalf("open the store of %s: %v", state, err)
		}
		defer b.Close()
		kv, err := b.JS.KeyValue(ctx, subjects.RunsBucket)
		if err != nil {
			t.Fatalf("bucket %s: %v", subjects.RunsBucket, err)
		}
		keys, err := kv.Keys(ctx)
		if err != nil {
			t.Fatalf("keys of %s: %v", subjects.RunsBucket, err)
		}
		if len(keys) != 1 {
			t.Errorf("bucket %s holds keys %v, want exactly 1 (the valid run)", subjects.RunsBucket, keys)
		}
	})
}

func TestRunEnv(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	res := RunWeft(t, weftBin, "", []string{"TMPDIR=" + tmp},
		"run", "--branch", "feature/x", "--commit", "abc123", "--json", "testdata/env.yml")
	if res.Code != 0 {
		t.Fatalf("weft run env.yml exited %d, want 0\nstdout:\n%s\nstderr:\n%s", res.Code, res.Stdout, res.Stderr)
	}
	evs := decodeEvents(t, res.Stdout)
	id := runID(t, evs)
	logs := stageLogs(evs)
	for _, tc := range []struct {
		stage string
		want  map[string]string
	}{
		{"show", map[string]string{"WEFT_QUEUE": "default", "B": "stage"}},
		{"other", map[string]string{"WEFT_QUEUE": "other", "B": "pipe"}},
	} {
		env := map[string]string{}
		for _, line := range logs[tc.stage] {
			if k, v, ok := strings.Cut(line, "="); ok {
				env[k] = v
			}
		}
		want := map[string]string{
			"WEFT_RUN_ID":   id,
			"WEFT_PIPELINE": "env-check",
			"WEFT_STAGE":    tc.stage,
			"WEFT_ATTEMPT":  "1",
			"WEFT_BRANCH":   "feature/x",
			"WEFT_COMMIT":   "abc123",
			"A":             "pipe",
		}
		for k, v := range tc.want {
			want[k] = v
		}
		for k, v := range want {
			if got, ok := env[k]; !ok || got != v {
				t.Errorf("stage %s: %s = %q (set: %v), want %q\noutput:\n%s", tc.stage, k, got, ok, v, strings.Join(logs[tc.stage], "\n"))
			}
		}
	}
	assertEmptyDir(t, tmp)
}

func TestRunTimeout(t *testing.T) {
	t.Parallel()
	res := RunWeft(t, weftBin, "", nil, "run", "--json", "testdata/timeout.yml")
	if res.Code != 1 {
		t.Errorf("weft run timeout.yml exited %d, want 1\nstderr:\n%s", res.Code, res.Stderr)
	}
	if res.Elapsed >= 20*time.Second {
		t.Errorf("weft run timeout.yml took %v, want well under 60s (< 20s)", res.Elapsed)
	}
	evs := decodeEvents(t, res.Stdout)
	id := runID(t, evs)
	r := finalRun(t, evs)
	if s := stage(t, r, "nap"); s.State != wire.StageFailed || s.Category != wire.CategoryTimeout {
		t.Errorf("nap = %s, category %q; want %s, category %q", s.State, s.Category, wire.StageFailed, wire.CategoryTimeout)
	}
	if r.State != wire.RunFailed {
		t.Errorf("run state = %q, want %q", r.State, wire.RunFailed)
	}
	var left []int
	if !Eventually(2*time.Second, func() bool {
		left = ProcessesWithEnv("WEFT_RUN_ID=" + id)
		return len(left) == 0
	}) {
		t.Errorf("processes %v of run %s still alive after weft exited", left, id)
	}
}

func TestNatsCLISeesStreams(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	file := filepath.Join(dir, "gate.yml")
	pipeline := fmt.Sprintf(`name: gate
env:
  GATE: %q
stages:
  - key: wait
    commands:
      - while [ ! -f "$GATE" ]; do sleep 0.05; done
      - echo opened
`, gate)
	if err := os.WriteFile(file, []byte(pipeline), 0o644); err != nil {
		t.Fatal(err)
	}

	p := startWeft(t, nil, "run", "--state", filepath.Join(dir, "state"), file)
	const prefix = "weft: nats server listening on "
	line := p.waitLine(t, &p.stderr, 30*time.Second, "listening line on stderr", func(s string) bool {
		return strings.HasPrefix(s, prefix+"nats://")
	})
	url, _, _ := strings.Cut(strings.TrimPrefix(line, prefix), " ")
	p.waitLine(t, &p.stdout, 30*time.Second, "stage started line on stdout", func(s string) bool {
		return strings.Contains(s, "started")
	})

	out := natsCLI(t, url, "stream", "ls", "--names")
	names := strings.Fields(string(out))
	for _, want := range []string{"WEFT_JOBS", "WEFT_EVENTS", "WEFT_LOGS", "WEFT_TRIGGERS", "WEFT_DLQ"} {
		if !slices.Contains(names, want) {
			t.Errorf("nats stream ls --names = %q, want it to list %s", names, want)
		}
	}

	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(t, 30*time.Second); code != 0 {
		t.Errorf("weft run exited %d, want 0\nstdout:\n%s\nstderr:\n%s", code,
			strings.Join(p.stdout.all(), "\n"), strings.Join(p.stderr.all(), "\n"))
	}
}

func TestRunInterrupt(t *testing.T) {
	t.Parallel()
	tmp := t.TempDir()
	p := startWeft(t, []string{"TMPDIR=" + tmp}, "run", "--json", "testdata/sleep.yml")

	running := p.waitLine(t, &p.stdout, 30*time.Second, `"running" stage line`, func(s string) bool {
		var ev event
		return json.Unmarshal([]byte(s), &ev) == nil && ev.Type == "stage" && ev.Stage != nil &&
			ev.Stage.Key == "nap" && ev.Stage.State == wire.StageRunning
	})
	var ev event
	if err := json.Unmarshal([]byte(running), &ev); err != nil {
		t.Fatal(err)
	}
	id := ev.RunID
	kv := "WEFT_RUN_ID=" + id
	// sh and the two sleeps; at least the two sleeps.
	var procs []int
	if !Eventually(10*time.Second, func() bool {
		procs = ProcessesWithEnv(kv)
		return len(procs) >= 2
	}) {
		t.Fatalf("stage of run %s has processes %v, want at least the two sleeps", id, procs)
	}

	signalled := time.Now()
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatalf("SIGINT weft: %v", err)
	}
	var left []int
	if !Eventually(time.Until(signalled.Add(2*time.Second)), func() bool {
		left = ProcessesWithEnv(kv)
		return len(left) == 0
	}) {
		t.Errorf("processes %v of run %s still alive 2s after SIGINT (had %v)", left, id, procs)
	}

	code := p.wait(t, 30*time.Second)
	stdout := strings.Join(p.stdout.all(), "\n")
	if code != 1 {
		t.Errorf("weft run exited %d after SIGINT, want 1\nstderr:\n%s", code, strings.Join(p.stderr.all(), "\n"))
	}
	r := finalRun(t, decodeEvents(t, stdout))
	if r.State != wire.RunCancelled {
		t.Errorf("run state = %q, want %q", r.State, wire.RunCancelled)
	}
	if s := stage(t, r, "nap"); s.State != wire.StageCancelled {
		t.Errorf("nap state = %q, want %q", s.State, wire.StageCancelled)
	}
	assertEmptyDir(t, tmp)
}
