package test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weft-ci/weft/bench"
	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/wire"
)

// fleet is a weft server process and a client connection to it.
type fleet struct {
	url   string
	state string // the server's --state
	srv   *proc  // the weft server process
	s     *Stack // Bus only: no in-process components
	// creds are the operator credentials s connects with when the server
	// has auth on; empty when it has not.
	creds string
}

// startFleet starts `weft server` on a free port, with args added, and
// connects to it.
func startFleet(t *testing.T, args ...string) *fleet {
	t.Helper()
	return launchFleet(t, false, args...)
}

// startAuthFleet starts `weft server` with auth on, on a free port of
// loopback, and connects to it with operator credentials.
func startAuthFleet(t *testing.T, args ...string) *fleet {
	t.Helper()
	return launchFleet(t, true, append([]string{"--auth", "on"}, args...)...)
}

func launchFleet(t *testing.T, auth bool, args ...string) *fleet {
	t.Helper()
	f := &fleet{state: t.TempDir()}
	f.srv = startWeft(t, nil, append([]string{"server", "--state", f.state, "--listen", "127.0.0.1:0"}, args...)...)
	line := f.srv.waitLine(t, &f.srv.stderr, 30*time.Second, "the server's URL", func(l string) bool { return strings.Contains(l, "listening on ") })
	f.url = strings.Fields(strings.SplitN(line, "listening on ", 2)[1])[0]
	if auth {
		f.creds = f.mint(t, "operator")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{URL: f.url, CredsFile: f.creds})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	f.s = &Stack{Bus: b, t: t}
	return f
}

// mint runs weft creds role with args for the fleet's server and returns
// the credentials file.
func (f *fleet) mint(t *testing.T, role string, args ...string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), role+".creds")
	res := RunWeft(t, weftBin, "", nil, append([]string{"creds", role, "--state", f.state, "-o", out}, args...)...)
	if res.Code != 0 {
		t.Fatalf("weft creds %s: exit %d\n%s", role, res.Code, res.Stderr)
	}
	return out
}

// dispatcher starts `weft dispatcher` on the fleet with args and waits
// until it says it has started.
func (f *fleet) dispatcher(t *testing.T, args ...string) *proc {
	t.Helper()
	d := startWeft(t, nil, append([]string{"dispatcher", "--server", f.url, "--log-level", "info"}, args...)...)
	d.waitLine(t, &d.stderr, 30*time.Second, "dispatcher started", func(l string) bool { return strings.Contains(l, "dispatcher started") })
	return d
}

// agent starts `weft agent` with id and waits until it is registered.
func (f *fleet) agent(t *testing.T, id string, args ...string) *proc {
	t.Helper()
	return f.agentEnv(t, id, nil, args...)
}

// agentEnv starts `weft agent` with id and env added to its environment,
// and waits until it is registered.
func (f *fleet) agentEnv(t *testing.T, id string, env []string, args ...string) *proc {
	t.Helper()
	p := startWeft(t, env, append([]string{"agent", "--join", f.url, "--id", id, "--executor", "process"}, args...)...)
	if !Eventually(30*time.Second, func() bool {
		st, err := client.GetStatus(context.Background(), f.s.Bus.JS)
		if err != nil {
			return false
		}
		for _, a := range st.Agents {
			if a.ID == id {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("agent %s never registered; stderr:\n%s", id, strings.Join(p.stderr.all(), "\n"))
	}
	return p
}

func TestAgentKilledMidStageRunsAgainElsewhere(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	d := startWeft(t, nil, "dispatcher", "--server", f.url, "--metrics", "127.0.0.1:0")
	url := metricsURL(t, d)
	const ackWait = 2 * time.Second
	a := f.agent(t, "agent-a", "--ack-wait", ackWait.String())
	id := f.s.Submit(t, "name: crash\nstages:\n  - key: s\n    commands:\n      - 'if [ \"$WEFT_ATTEMPT\" = 1 ]; then sleep 60; fi'\n      - echo attempt $WEFT_ATTEMPT\n")
	t.Cleanup(func() {
		for _, pid := range ProcessesWithEnv("WEFT_RUN_ID=" + id) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	waitFor(t, f.s, id, "running on agent-a", func(r *wire.Run) bool {
		return r.Stage("s").State == wire.StageRunning && r.Stage("s").Agent == "agent-a"
	})
	f.agent(t, "agent-b", "--ack-wait", ackWait.String())
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	r, updates := f.s.Wait(t, id)
	st := r.Stage("s")
	if r.State != wire.RunSucceeded || st.Attempt != 2 || st.Agent != "agent-b" {
		t.Fatalf("run %s, stage attempt %d on %s; want succeeded on attempt 2 on agent-b", r.State, st.Attempt, st.Agent)
	}
	if recovery := st.Started.Sub(killed); recovery > ackWait+2*time.Second {
		t.Errorf("the stage restarted %v after the kill, want at most AckWait + 2s = %v", recovery, ackWait+2*time.Second)
	}
	if got := strings.Join(stageLines(updates)["s"], ","); got != "attempt 2" {
		t.Errorf("stage output %q, want attempt 2", got)
	}
	if got, ok := sample(scrape(t, url), "weft_redeliveries_total", map[string]string{"queue": "default"}); !ok || got != 1 {
		t.Errorf("weft_redeliveries_total{queue=default} = %v (found %v), want 1", got, ok)
	}
}

func TestAStageOfThreeAckWaitsKeepsOneAttempt(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	const ackWait = time.Second
	f.agent(t, "agent-a", "--ack-wait", ackWait.String())
	f.agent(t, "agent-b", "--ack-wait", ackWait.String())
	r, _ := f.s.Run(t, "name: long\nstages:\n  - key: s\n    commands: [sleep 3.5]\n")
	if st := r.Stage("s"); r.State != wire.RunSucceeded || st.Attempt != 1 {
		t.Errorf("run %s, attempt %d; want succeeded on attempt 1 (heartbeats every AckWait/3)", r.State, st.Attempt)
	}
}

// finishedEvents counts the finished events of each stage of a run.
func finishedEvents(t *testing.T, s *Stack, r *wire.Run) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, st := range r.Stages {
		for _, ev := range stageEvents(t, s.Bus.JS, r.ID, st.Key) {
			if ev.Type == wire.Finished {
				out[st.Key]++
			}
		}
	}
	return out
}

func TestTwoDispatchersAndOneKilledMidRun(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	const wip, runs = 2, 10
	info := []string{"WEFT_LOG_LEVEL=info"}
	d1 := startWeft(t, info, "dispatcher", "--server", f.url, "--wip", fmt.Sprint(wip))
	d2 := startWeft(t, info, "dispatcher", "--server", f.url, "--wip", fmt.Sprint(wip))
	var d3 *proc
	defer func() {
		if t.Failed() {
			for i, d := range []*proc{d1, d2, d3} {
				if d != nil {
					t.Logf("dispatcher %d:\n%s", i+1, strings.Join(d.stderr.all(), "\n"))
				}
			}
		}
	}()
	f.agent(t, "agent-a", "--slots", "4")
	text := "name: chain\nstages:\n" +
		"  - key: a\n    commands: [sleep 0.3]\n" +
		"  - key: b\n    depends_on: [a]\n    commands: [sleep 0.3]\n" +
		"  - key: c\n    depends_on: [a]\n    commands: [sleep 0.3]\n" +
		"  - key: d\n    depends_on: [b, c]\n    commands: [sleep 0.3]\n"
	var ids []string
	for range runs {
		ids = append(ids, f.s.Submit(t, text))
	}
	// Kill a dispatcher as soon as the first stage starts, while the runs
	// are running or waiting for a WIP slot: the one that admitted the
	// first run, when its log says so.
	// (Started, not running: a poll may miss the 0.3 s it runs.)
	waitFor(t, f.s, ids[0], "its first stage started", func(r *wire.Run) bool { return !r.Stage("a").Started.IsZero() })
	victim := d1
	if _, ok := d2.stderr.find(func(l string) bool { return strings.Contains(l, "run admitted") && strings.Contains(l, ids[0]) }); ok {
		victim = d2
	}
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waiting := 0
	for _, id := range ids {
		if r := runDoc(t, f.s, id); r.Admitted.IsZero() && !r.State.Terminal() {
			waiting++
		}
	}
	if waiting < runs-wip-1 {
		t.Fatalf("%d of %d runs waited for admission at the kill, want at least %d: the kill came too late to test anything", waiting, runs, runs-wip-1)
	}
	d3 = startWeft(t, info, "dispatcher", "--server", f.url, "--wip", fmt.Sprint(wip))
	var done []*wire.Run
	for _, id := range ids {
		r := waitFor(t, f.s, id, "ended", func(r *wire.Run) bool { return r.State.Terminal() })
		done = append(done, r)
		if r.State != wire.RunSucceeded {
			t.Errorf("run %s %s: %+v", id, r.State, r.Stages)
			continue
		}
		for key, n := range finishedEvents(t, f.s, r) {
			if n != 1 {
				t.Errorf("run %s stage %s finished %d times, want once", id, key, n)
			}
		}
	}
	admittedAfter, most := 0, 0
	for _, r := range done {
		if r.Admitted.After(killed) {
			admittedAfter++
		}
		inFlight := 0
		for _, o := range done {
			if !o.Admitted.After(r.Admitted) && o.Finished.After(r.Admitted) {
				inFlight++
			}
		}
		most = max(most, inFlight)
	}
	if admittedAfter < waiting {
		t.Errorf("%d runs were admitted after the kill, want the %d that waited", admittedAfter, waiting)
	}
	if most > wip {
		t.Errorf("%d runs were in flight at once, WIP limit %d", most, wip)
	}
}

func TestServerRestartMidRun(t *testing.T) {
	t.Parallel()
	state := t.TempDir()
	srv := startWeft(t, nil, "server", "--state", state, "--listen", "127.0.0.1:0")
	line := srv.waitLine(t, &srv.stderr, 30*time.Second, "the server's URL", func(l string) bool { return strings.Contains(l, "listening on ") })
	url := strings.Fields(strings.SplitN(line, "listening on ", 2)[1])[0]
	port := url[strings.LastIndexByte(url, ':')+1:]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{URL: url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	f := &fleet{url: url, s: &Stack{Bus: b, t: t}}
	startWeft(t, nil, "dispatcher", "--server", url)
	f.agent(t, "agent-a")
	g := newGate(t)
	id := f.s.Submit(t, "name: restart\nenv: {GATE: "+string(g)+"}\nstages:\n  - key: a\n    commands: ['while [ ! -f \"$GATE\" ]; do sleep 0.02; done']\n  - key: b\n    depends_on: [a]\n    commands: [echo after the restart]\n")
	waitFor(t, f.s, id, "running", stageIs("a", wire.StageRunning))
	// Stop the server (SIGKILL: no clean shutdown) and start it again on
	// the same port and state.
	if err := srv.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	srv.wait(t, 10*time.Second)
	startWeft(t, nil, "server", "--state", state, "--listen", "127.0.0.1:"+port)
	g.open(t)
	r, _ := f.s.Wait(t, id)
	if r.State != wire.RunSucceeded {
		t.Errorf("run %s after a server restart: %+v", r.State, r.Stages)
	}
}

func TestAJobThatKeepsCrashingItsAgentIsDeadLettered(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	// Keep one agent alive: the stage kills each one that runs it.
	ctx, cancel := context.WithCancel(context.Background())
	var supervisor sync.WaitGroup
	t.Cleanup(func() { cancel(); supervisor.Wait() })
	supervisor.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			p := startWeft(t, nil, "agent", "--join", f.url, "--id", fmt.Sprintf("agent-%d", i),
				"--executor", "process", "--ack-wait", "1s", "--max-deliver", "3")
			select {
			case <-p.done:
			case <-ctx.Done():
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
	})
	heal := filepath.Join(t.TempDir(), "heal")
	id := f.s.Submit(t, "name: poison\nenv: {HEAL: "+heal+"}\nstages:\n"+
		"  - key: poison\n    commands: ['[ -f \"$HEAL\" ] || kill -9 $PPID', echo healed]\n"+
		"  - key: after\n    depends_on: [poison]\n    commands: [echo after]\n")
	r := waitFor(t, f.s, id, "failed", func(r *wire.Run) bool { return r.State.Terminal() })
	st := r.Stage("poison")
	if r.State != wire.RunFailed || st.Category != wire.CategoryDeadLetter || r.Stage("after").State != wire.StageSkipped {
		t.Fatalf("run %s, poison %s/%s, after %s; want failed, dead_letter, skipped", r.State, st.State, st.Category, r.Stage("after").State)
	}
	ls := RunWeft(t, weftBin, t.TempDir(), nil, "dlq", "ls", "--server", f.url, "--json")
	var dls []client.DeadLetter
	if err := json.Unmarshal([]byte(ls.Stdout), &dls); ls.Code != 0 || err != nil || len(dls) != 1 {
		t.Fatalf("weft dlq ls = %d %q (%v), want one dead letter", ls.Code, ls.Stdout, err)
	}
	if dl := dls[0]; dl.RunID != id || dl.Stage != "poison" || dl.Deliveries != 3 {
		t.Errorf("dead letter %+v, want run %s stage poison after 3 deliveries", dl, id)
	}
	if err := os.WriteFile(heal, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	res := RunWeft(t, weftBin, t.TempDir(), nil, "dlq", "replay", "--server", f.url, fmt.Sprint(dls[0].Seq))
	if res.Code != 0 {
		t.Fatalf("weft dlq replay = %d %s", res.Code, res.Stderr)
	}
	r = waitFor(t, f.s, id, "succeeded after the replay", func(r *wire.Run) bool { return r.State == wire.RunSucceeded })
	if st := r.Stage("poison"); st.Job <= dls[0].Job || r.Stage("after").State != wire.StageSucceeded {
		t.Errorf("after the replay: poison job %d (dead job %d), after %s; want a new job and after succeeded", st.Job, dls[0].Job, r.Stage("after").State)
	}
	if ls := RunWeft(t, weftBin, t.TempDir(), nil, "dlq", "ls", "--server", f.url, "--json"); strings.TrimSpace(ls.Stdout) != "null" {
		t.Errorf("the DLQ after the replay: %s", ls.Stdout)
	}
}

// TestChaosKeepsEveryInvariant runs `weft bench chaos` (server, two
// dispatchers and agents as separate processes, each killed at random)
// with 60 runs over 3 repositories at WIP 2 and asserts every figure of
// its checker, and that the faults and the waits it needs happened.
func TestChaosKeepsEveryInvariant(t *testing.T) {
	t.Parallel()
	const runs, repos, wip = 60, 3, 2
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	args := []string{"bench", "chaos", "--json", "--runs", fmt.Sprint(runs), "--repos", fmt.Sprint(repos), "--wip", fmt.Sprint(wip), "--dir", dir}
	if !containerdReachable() {
		if InCI() {
			t.Fatalf("containerd is not reachable at %s; CI=true requires it for the chaos's container stages", ContainerdAddress())
		}
		args = append(args, "--host-only")
	}
	cmd := exec.CommandContext(ctx, weftBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := cmd.ProcessState.ExitCode()
	var out struct {
		Chaos *bench.ChaosResult `json:"chaos"`
	}
	if jerr := json.Unmarshal(stdout.Bytes(), &out); jerr != nil || out.Chaos == nil {
		t.Fatalf("weft bench chaos = %v (exit %d), output not a chaos result (%v):\n%s\n%s", err, code, jerr, stdout.String(), stderr.String())
	}
	c := out.Chaos
	defer func() {
		if t.Failed() {
			t.Logf("weft bench chaos exited %d; progress:\n%s\nproblems:\n  %s", code, stderr.String(), strings.Join(c.Problems, "\n  "))
			for _, l := range c.LostRuns {
				t.Logf("lost: %+v", l)
			}
		}
	}()
	if (code == 0) != c.OK || (code != 0 && code != 1) {
		t.Errorf("exit code %d with ok = %t, want 0 when ok and 1 when not", code, c.OK)
	}
	// The scenario and its faults.
	if c.Runs != runs || c.Accepted != runs || c.Repos != repos || c.WIPLimit != wip {
		t.Errorf("%d runs (%d accepted) over %d repositories at WIP %d, want %d, all accepted, %d, %d", c.Runs, c.Accepted, c.Repos, c.WIPLimit, runs, repos, wip)
	}
	if c.AgentKills == 0 || len(c.DispatcherKills) != 2 || c.DispatcherKills[0] == 0 || c.DispatcherKills[1] == 0 || c.ServerRestarts != 1 {
		t.Errorf("%d agent kills, dispatcher kills %v, %d server restarts; want agents killed, both dispatchers killed, one server restart", c.AgentKills, c.DispatcherKills, c.ServerRestarts)
	}
	// Coverage: without these the invariants below would hold vacuously.
	for _, cov := range []struct {
		what string
		n    int
	}{
		{"runs cancelled by the client while a stage ran", c.CancelledRunning},
		{"runs cancelled by the client while they waited", c.CancelledWaiting},
		{"cancel_in_progress runs superseded while a stage ran", c.SupersededRunning},
		{"runs that waited for their concurrency group", c.GroupWaited},
		{"stages of killed agents that ran again", c.Takeovers},
		{"host stage executions recorded", c.HostStages},
	} {
		if cov.n == 0 {
			t.Errorf("no %s", cov.what)
		}
	}
	if c.AdmittedFromWaiting*2 < c.Accepted {
		t.Errorf("%d of %d runs were admitted from the waiting list, want most", c.AdmittedFromWaiting, c.Accepted)
	}
	if c.MaxInFlight != wip {
		t.Errorf("at most %d runs of a repository were in flight, want the WIP limit %d reached and never passed", c.MaxInFlight, wip)
	}
	if c.Containers && c.ContainerStages == 0 {
		t.Errorf("containers on (%s) but no container stage was seen", c.ContainersNote)
	}
	// The invariants.
	for _, inv := range []struct {
		what string
		n    int
	}{
		{"runs lost", c.Lost},
		{"runs stuck", c.Stuck},
		{"stages finished twice", c.FinishedTwice},
		{"stages run twice", c.RunTwice},
		{"leases and group locks left", c.LeasesLeft},
		{"workspaces left on agents", c.WorkspacesLeft},
		{"containers left", c.ContainersLeft},
		{"processes that panicked", len(c.Panics)},
	} {
		if inv.n != 0 {
			t.Errorf("%s: %d, want 0", inv.what, inv.n)
		}
	}
	if c.MaxExecuting > wip || c.MaxGroupInFlight > 1 || c.MaxGroupExecuting > 1 {
		t.Errorf("most runs executing per repository %d (limit %d), per group in flight %d and executing %d (limit 1)", c.MaxExecuting, wip, c.MaxGroupInFlight, c.MaxGroupExecuting)
	}
	if c.RecoveryMax > c.RecoveryLimit || c.RecoveryP50 == 0 {
		t.Errorf("kill to restart p50 %v, max %v, limit %v", c.RecoveryP50, c.RecoveryMax, c.RecoveryLimit)
	}
	if len(c.Problems) != 0 {
		t.Errorf("%d problems", len(c.Problems))
	}
}

// containerdReachable reports whether containerd answers at
// ContainerdAddress.
func containerdReachable() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rt, err := container.Connect(ctx, container.Config{Address: ContainerdAddress()})
	if err != nil {
		return false
	}
	rt.Close()
	return true
}

// An agent that hears nothing from the server for most of the AckWait
// kills its stage at once, reporting nothing: the server may redeliver
// the job to another agent meanwhile, and two attempts must never run at
// once. Before, the stage ran on until the agent could read the run
// document again (issue 9, chaos 2: a stage ran on two agents after a
// server restart). The server is frozen (SIGSTOP) to cut it off.
func TestAnAgentCutOffFromTheServerStopsItsStage(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	f.agent(t, "agent-a", "--ack-wait", "3s")
	id := f.s.Submit(t, "name: cut\nstages:\n  - key: s\n    commands:\n      - 'if [ \"$WEFT_ATTEMPT\" = 1 ]; then sleep 60; fi'\n")
	t.Cleanup(func() {
		for _, pid := range ProcessesWithEnv("WEFT_RUN_ID=" + id) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	waitFor(t, f.s, id, "running", stageIs("s", wire.StageRunning))
	if len(ProcessesWithEnv("WEFT_RUN_ID="+id)) == 0 {
		t.Fatal("the stage runs but none of its processes is there")
	}
	if err := f.srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			_ = f.srv.cmd.Process.Signal(syscall.SIGCONT)
		}
	}
	t.Cleanup(resume)
	stopped := Eventually(15*time.Second, func() bool { return len(ProcessesWithEnv("WEFT_RUN_ID="+id)) == 0 })
	resume()
	if !stopped {
		t.Fatal("the stage still runs 15s after its agent lost the server (AckWait 3s)")
	}
	final, _ := f.s.Wait(t, id)
	if st := final.Stage("s"); final.State != wire.RunSucceeded || st.Attempt < 2 {
		t.Errorf("run %s, attempt %d; want succeeded on a later attempt", final.State, st.Attempt)
	}
	for _, ev := range stageEvents(t, f.s.Bus.JS, id, "s") {
		if ev.Type == wire.Finished && ev.Attempt == 1 {
			t.Errorf("the cut-off attempt reported %+v", ev)
		}
	}
}
