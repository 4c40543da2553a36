package test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/wire"
)

// ansi matches the colour codes of zerolog's console writer.
var ansi = regexp.MustCompile(`\x1b\[[0-9;]*m`)

// agentsAre reports, each time it is called, whether the registry shows
// want agents serving queue (queueAgents).
func agentsAre(t *testing.T, f *fleet, queue string, want int) func() bool {
	return func() bool { n, ok := queueAgents(t, f, queue); return ok && n == want }
}

// queueAgents counts the agents the registry shows serving queue,
// draining ones left out, as weft autoscale counts them.
func queueAgents(t *testing.T, f *fleet, queue string) (int, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	agents, err := client.Agents(ctx, f.s.Bus.JS)
	if err != nil {
		return 0, false
	}
	n := 0
	for _, a := range agents {
		if !a.Draining && slices.Contains(a.Queues, queue) {
			n++
		}
	}
	return n, true
}

// agentWatch records the least and the most agents of a queue the
// registry showed, from the first time it showed one, until stop.
type agentWatch struct {
	mu       sync.Mutex // guards least, most and seen
	least    int
	most     int
	seen     bool
	stopOnce func()
}

func watchAgents(t *testing.T, f *fleet, queue string) *agentWatch {
	t.Helper()
	w := &agentWatch{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			if n, ok := queueAgents(t, f, queue); ok {
				w.mu.Lock()
				if !w.seen && n > 0 {
					w.seen, w.least = true, n
				}
				if w.seen {
					w.least, w.most = min(w.least, n), max(w.most, n)
				}
				w.mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
		}
	})
	w.stopOnce = sync.OnceFunc(func() { cancel(); wg.Wait() })
	t.Cleanup(w.stopOnce)
	return w
}

// stop stops the watch and returns the least and the most agents seen.
func (w *agentWatch) stop() (least, most int) {
	w.stopOnce()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.least, w.most
}

// decisions returns weft_autoscale_decisions_total of queue and action.
func decisions(t *testing.T, url, queue, action string) float64 {
	t.Helper()
	n, _ := sample(scrape(t, url), "weft_autoscale_decisions_total", map[string]string{"queue": queue, "action": action})
	return n
}

// With more jobs waiting than the threshold, weft autoscale starts local
// agents one by one up to --max and holds there; once the queue drains
// and stays idle for the cooldown it drains them down to --min, and on
// SIGTERM it drains the last one and exits 0.
func TestAutoscaleAddsLocalAgentsUpToMaxAndRemovesThemAfterTheCooldown(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url, "--wip", "100")
	const queue = "autoscaled"
	w := watchAgents(t, f, queue)
	as := startWeft(t, nil, "autoscale", "--server", f.url, "--queue", queue, "--min", "1", "--max", "3", "--threshold", "2",
		"--cooldown", "2s", "--interval", "200ms", "--executor", "process", "--metrics", "127.0.0.1:0")
	g := newGate(t)
	// Before the autoscaler is killed (cleanups run last first): its
	// agents, drained then, finish their stages.
	t.Cleanup(func() { _ = os.WriteFile(string(g), nil, 0o600) })
	defer func() {
		if t.Failed() {
			t.Logf("weft autoscale:\n%s", strings.Join(as.stderr.all(), "\n"))
		}
	}()
	url := metricsURL(t, as)
	if !Eventually(30*time.Second, agentsAre(t, f, queue, 1)) {
		t.Fatal("the queue never got its minimum of 1 agent")
	}

	var ids []string
	for i := range 8 {
		ids = append(ids, f.s.Submit(t, g.pipeline(fmt.Sprintf("busy-%d", i), "queue: "+queue+"\n")))
	}
	if !Eventually(60*time.Second, agentsAre(t, f, queue, 3)) {
		n, _ := queueAgents(t, f, queue)
		t.Fatalf("%d agents with 7 jobs waiting, want the maximum of 3", n)
	}
	if !Eventually(30*time.Second, func() bool { return decisions(t, url, queue, "hold-at-max") >= 1 }) {
		t.Fatal("no hold-at-max decision at 3 agents with jobs waiting")
	}

	g.open(t)
	for _, id := range ids {
		if r, _ := f.s.Wait(t, id); r.State != wire.RunSucceeded {
			t.Fatalf("run %s %s, want succeeded", id, r.State)
		}
	}
	if !Eventually(30*time.Second, func() bool { return agentsAre(t, f, queue, 1)() && decisions(t, url, queue, "down") == 2 }) {
		n, _ := queueAgents(t, f, queue)
		t.Fatalf("%d agents after the queue drained and %v down decisions, want the minimum of 1 after 2", n, decisions(t, url, queue, "down"))
	}
	// It stays at the minimum: more decisions, all holds.
	holds := decisions(t, url, queue, "hold")
	if !Eventually(30*time.Second, func() bool { return decisions(t, url, queue, "hold") >= holds+5 }) {
		t.Fatal("no more decisions at the minimum")
	}
	least, most := w.stop()
	if least != 1 || most != 3 {
		t.Errorf("the registry showed %d to %d agents of %s, want 1 (--min) to 3 (--max)", least, most, queue)
	}

	fams := scrape(t, url)
	for _, c := range []struct {
		fam    string
		labels map[string]string
		want   float64
	}{
		{"weft_autoscale_decisions_total", map[string]string{"queue": queue, "action": "up"}, 3}, // to the minimum, then twice by the threshold
		{"weft_autoscale_decisions_total", map[string]string{"queue": queue, "action": "down"}, 2},
		{"weft_autoscale_agents", map[string]string{"queue": queue}, 1},
		{"weft_autoscale_target_agents", map[string]string{"queue": queue}, 1},
		{"weft_autoscale_min_agents", map[string]string{"queue": queue}, 1},
		{"weft_autoscale_managed_agents", map[string]string{"queue": queue}, 1},
	} {
		if got, ok := sample(fams, c.fam, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.fam, c.labels, got, ok, c.want)
		}
	}
	if got, ok := sample(fams, "weft_autoscale_hook_failures_total", map[string]string{"queue": queue}); ok && got != 0 {
		t.Errorf("weft_autoscale_hook_failures_total = %v, want none", got)
	}
	for _, want := range []string{"action=up", "action=down", "action=hold-at-max", "started an agent", "draining an agent"} {
		if _, ok := as.stderr.find(func(l string) bool { return strings.Contains(ansi.ReplaceAllString(l, ""), want) }); !ok {
			t.Errorf("the autoscaler's log has no line with %q", want)
		}
	}

	// SIGTERM: the last agent drains, the autoscaler waits for it.
	if err := as.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := as.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("weft autoscale exited %d on SIGTERM, want 0", code)
	}
	if n, ok := queueAgents(t, f, queue); !ok || n != 0 {
		t.Errorf("%d agents of %s once the autoscaler exited, want its last one gone", n, queue)
	}
}

// --up-cmd and --down-cmd run with the queue, its agents and the target:
// here they start an agent in the background and drain it by id. A hook
// that fails is counted and asked again at the next decision.
func TestAutoscaleRunsItsHooks(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url, "--wip", "100")
	dir := t.TempDir()
	t.Cleanup(func() { // the agents the up hook started
		pids, _ := filepath.Glob(filepath.Join(dir, "*.pid"))
		for _, file := range pids {
			b, _ := os.ReadFile(file)
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	const queue = "hooked"
	log := filepath.Join(dir, "hooks.log")
	up := fmt.Sprintf(`echo "up $WEFT_QUEUE $WEFT_AGENTS $WEFT_TARGET" >> '%[1]s/hooks.log'
'%[2]s' agent --join "$WEFT_SERVER" --queue "$WEFT_QUEUE" --id "hook-$WEFT_TARGET" --executor process > '%[1]s/agent-'$WEFT_TARGET.log 2>&1 &
echo $! > '%[1]s/agent-'$WEFT_TARGET.pid`, dir, weftBin)
	down := fmt.Sprintf(`echo "down $WEFT_QUEUE $WEFT_AGENTS $WEFT_TARGET" >> '%[1]s/hooks.log'
'%[2]s' agent drain --server "$WEFT_SERVER" "hook-$WEFT_AGENTS"`, dir, weftBin)
	as := startWeft(t, nil, "autoscale", "--server", f.url, "--queue", queue, "--min", "1", "--max", "2", "--threshold", "2",
		"--cooldown", "1s", "--interval", "200ms", "--up-cmd", up, "--down-cmd", down, "--metrics", "127.0.0.1:0")
	defer func() {
		if t.Failed() {
			t.Logf("weft autoscale:\n%s", strings.Join(as.stderr.all(), "\n"))
		}
	}()
	url := metricsURL(t, as)
	if !Eventually(30*time.Second, agentsAre(t, f, queue, 1)) {
		t.Fatal("the up hook's agent never joined")
	}
	g := newGate(t)
	t.Cleanup(func() { _ = os.WriteFile(string(g), nil, 0o600) })
	var ids []string
	for i := range 3 {
		ids = append(ids, f.s.Submit(t, g.pipeline(fmt.Sprintf("hooked-%d", i), "queue: "+queue+"\n")))
	}
	if !Eventually(30*time.Second, agentsAre(t, f, queue, 2)) {
		t.Fatal("no second agent with 2 jobs waiting")
	}
	g.open(t)
	for _, id := range ids {
		if r, _ := f.s.Wait(t, id); r.State != wire.RunSucceeded {
			t.Fatalf("run %s %s, want succeeded", id, r.State)
		}
	}
	if !Eventually(30*time.Second, func() bool { return agentsAre(t, f, queue, 1)() && decisions(t, url, queue, "down") == 1 }) {
		t.Fatal("the down hook never drained the second agent")
	}
	holds := decisions(t, url, queue, "hold")
	if !Eventually(30*time.Second, func() bool { return decisions(t, url, queue, "hold") >= holds+5 }) {
		t.Fatal("no more decisions at the minimum")
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Split(strings.TrimSpace(string(b)), "\n"), []string{"up hooked 0 1", "up hooked 1 2", "down hooked 2 1"}; !slices.Equal(got, want) {
		t.Errorf("the hooks ran %q, want %q", got, want)
	}
	if err := as.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := as.wait(t, 30*time.Second); code != 0 {
		t.Fatalf("weft autoscale exited %d on SIGTERM, want 0", code)
	}

	// A hook that fails: logged, counted, and run again at each decision.
	tries := filepath.Join(dir, "tries.log")
	broken := startWeft(t, nil, "autoscale", "--server", f.url, "--queue", "broken", "--min", "1", "--interval", "200ms",
		"--up-cmd", fmt.Sprintf(`echo "$WEFT_QUEUE $WEFT_TARGET" >> '%s'; exit 7`, tries), "--metrics", "127.0.0.1:0")
	burl := metricsURL(t, broken)
	if !Eventually(30*time.Second, func() bool {
		n, _ := sample(scrape(t, burl), "weft_autoscale_hook_failures_total", map[string]string{"queue": "broken"})
		return n >= 3
	}) {
		t.Fatalf("the failing hook was not counted 3 times; log:\n%s", strings.Join(broken.stderr.all(), "\n"))
	}
	b, _ = os.ReadFile(tries)
	if lines := strings.Split(strings.TrimSpace(string(b)), "\n"); len(lines) < 3 || lines[0] != "broken 1" {
		t.Errorf("the failing hook ran %q, want it again and again with broken 1", lines)
	}
	if _, ok := broken.stderr.find(func(l string) bool {
		return strings.Contains(l, "scaling failed") && strings.Contains(l, "exit status 7")
	}); !ok {
		t.Errorf("no log line of the failing hook:\n%s", strings.Join(broken.stderr.all(), "\n"))
	}
}

// Bad flags exit 2 naming the flag and the field, before connecting.
func TestAutoscaleRefusesBadFlags(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--schedule", "Mun-Fri 08:00-18:00 min=4"}, `--schedule: schedule "Mun-Fri 08:00-18:00 min=4": days: unknown day "Mun"`},
		{[]string{"--schedule", "Mon-Fri 08:00-18:00 min=9"}, `schedule "Mon-Fri 08:00-18:00 min=9": min=9: above max 6`},
		{[]string{"--schedule", "Mon-Fri 8-18 min=4"}, `--schedule: schedule "Mon-Fri 8-18 min=4": time: start: "8" is not a time of day HH:MM`},
		{[]string{"--tz", "Mars/Olympus", "--schedule", "Sat min=1"}, `--tz "Mars/Olympus"`},
		{[]string{"--min", "7"}, "min 7: above max 6"},
		{[]string{"--threshold", "0"}, "threshold 0: want at least 1"},
		{[]string{"--queue", "Main"}, `--queue: `},
		{[]string{"--slots", "0"}, "--slots 0: want 1 or more"},
		{[]string{"--down-cmd", "true"}, "--down-cmd needs an --up-cmd"},
		{[]string{"--up-cmd", "true", "--slots", "2"}, "--slots: for the agents autoscale starts itself"},
	} {
		res := RunWeft(t, weftBin, "", nil, append([]string{"autoscale", "--server", "nats://127.0.0.1:1"}, c.args...)...)
		if res.Code != 2 || !strings.Contains(res.Stderr, c.want) {
			t.Errorf("weft autoscale %v: exit %d, %q; want 2 and %q", c.args, res.Code, res.Stderr, c.want)
		}
	}
	res := RunWeft(t, weftBin, "", nil, "autoscale", "--help")
	if res.Code != 0 || !strings.Contains(res.Stdout, "Examples:") || !strings.Contains(res.Stdout, "--schedule") {
		t.Errorf("weft autoscale --help: exit %d, %q; want 0 with its examples", res.Code, res.Stdout)
	}
}
