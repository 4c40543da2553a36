package bench

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/wire"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

func at(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// cleanChaos returns observations in which every invariant held and every
// fault happened: one repository at WIP 1, seven runs one after the
// other, an agent killed while it ran r1's build.
func cleanChaos() *observations {
	o := &observations{WIP: 1, AckWait: 2 * time.Second, MaxRecovery: 30 * time.Second, Dispatchers: 2,
		Docs: map[string]*wire.Run{}, Pending: map[string]map[string]bool{}, End: at(100), Stopped: at(90)}
	type run struct {
		kind                      runKind
		group                     string
		created, admitted, finish float64
		state                     wire.RunState
	}
	runs := []run{
		{kindPlain, "", 0, 0, 10, wire.RunSucceeded},
		{kindGroup, "deploy-main", 1, 10, 20, wire.RunSucceeded},
		{kindGroup, "deploy-main", 2, 20, 30, wire.RunSucceeded},
		{kindSuperseded, "preview-pr", 3, 30, 35, wire.RunCancelled},
		{kindLatest, "preview-pr", 4, 35, 40, wire.RunSucceeded},
		{kindCancel, "", 5, 40, 45, wire.RunCancelled},
		{kindCancelEarly, "", 6, -1, 7, wire.RunCancelled},
	}
	for i, r := range runs {
		id := "r" + string(rune('1'+i))
		cr := &chaosRun{Index: i, Kind: r.kind, Repo: "acme/api", Group: r.group, ID: id}
		if r.kind == kindCancel {
			cr.Cancelled, cr.CancelledRunning = at(44), true
		}
		o.Runs = append(o.Runs, cr)
		d := &wire.Run{ID: id, State: r.state, Created: at(r.created), Finished: at(r.finish)}
		if r.admitted >= 0 {
			d.Admitted = at(r.admitted)
			d.Stages = []wire.StageRun{{Key: "build", State: wire.StageSucceeded, Started: at(r.admitted + 0.5)}}
			o.Execs = append(o.Execs, execution{Run: id, Stage: "build", Attempt: 1, Agent: "agent2-1", PID: 100 + i,
				Start: at(r.admitted + 0.5), End: at(r.finish - 0.5), Ended: true})
		}
		o.Docs[id] = d
	}
	o.Pending["r3"] = map[string]bool{wire.PendingGroup: true}
	// r1's build: started on agent1-1, which was killed at 2 s, and
	// again on agent2-1 at 4.5 s.
	o.Execs[0] = execution{Run: "r1", Stage: "build", Attempt: 1, Agent: "agent1-1", PID: 99, Start: at(0.5), End: at(1.9)}
	o.Execs = append(o.Execs, execution{Run: "r1", Stage: "build", Attempt: 2, Agent: "agent2-1", PID: 98, Start: at(4.5), End: at(9.5), Ended: true})
	o.Events = []wire.Event{
		{Type: wire.Started, RunID: "r1", Stage: "build", Attempt: 1, Agent: "agent1-1", Time: at(0.5)},
		{Type: wire.Started, RunID: "r1", Stage: "build", Attempt: 2, Agent: "agent2-1", Time: at(4.5)},
		{Type: wire.Finished, RunID: "r1", Stage: "build", Attempt: 2, Agent: "agent2-1", Time: at(9.5)},
	}
	o.Kills = []kill{
		{Kind: memberAgent, Member: "agent1", ID: "agent1-1", At: at(2)},
		{Kind: memberDispatcher, Member: "dispatcher1", ID: "dispatcher1-1", At: at(3)},
		{Kind: memberDispatcher, Member: "dispatcher2", ID: "dispatcher2-1", At: at(12)},
		{Kind: memberServer, Member: "server", ID: "server-1", At: at(50)},
	}
	o.ServerDown, o.ServerUp = at(50), at(56)
	return o
}

func TestCheckCleanChaosIsOK(t *testing.T) {
	res := check(cleanChaos())
	if !res.OK || len(res.Problems) > 0 {
		t.Fatalf("check(clean) problems = %q, want none", res.Problems)
	}
	if res.Takeovers != 1 || res.RecoveryMax != 2500*time.Millisecond {
		t.Errorf("takeovers %d, recovery max %v; want 1 and 2.5s", res.Takeovers, res.RecoveryMax)
	}
	if res.AdmittedFromWaiting != 5 || res.GroupWaited != 1 || res.MaxInFlight != 1 || res.MaxGroupInFlight != 1 {
		t.Errorf("admitted from waiting %d, group waited %d, max in flight %d, per group %d; want 5, 1, 1, 1",
			res.AdmittedFromWaiting, res.GroupWaited, res.MaxInFlight, res.MaxGroupInFlight)
	}
	if res.CancelledRunning != 1 || res.CancelledWaiting != 1 || res.SupersededRunning != 1 {
		t.Errorf("cancelled running %d, waiting %d, superseded running %d; want 1 each", res.CancelledRunning, res.CancelledWaiting, res.SupersededRunning)
	}
}

func TestCheckFindsEachBrokenInvariant(t *testing.T) {
	doc := func(o *observations, id string) *wire.Run { return o.Docs[id] }
	tests := []struct {
		name   string
		mutate func(o *observations)
		want   string
	}{
		{"a run failed", func(o *observations) { doc(o, "r5").State = wire.RunFailed }, "1 runs lost (0 stuck)"},
		{"a cancelled run succeeded", func(o *observations) { doc(o, "r6").State = wire.RunSucceeded }, "1 runs lost"},
		{"a run never ended", func(o *observations) { doc(o, "r5").State = wire.RunRunning }, "1 runs lost (1 stuck)"},
		{"a run document is gone", func(o *observations) { delete(o.Docs, "r2") }, "r2 group acme/api (missing"},
		{"a trigger got no run", func(o *observations) { o.Runs[6].ID = "" }, "1 triggers never got a run id"},
		{"a stage ran again after its success was stored", func(o *observations) {
			o.Events = append(o.Events, wire.Event{Type: wire.Started, RunID: "r1", Stage: "build", Attempt: 3, Agent: "agent3-1", Time: at(9.8)},
				wire.Event{Type: wire.Finished, RunID: "r1", Stage: "build", Attempt: 3, Agent: "agent3-1", Time: at(9.9)})
		}, "1 stages ran again and succeeded after a stored success: r1/build (attempts 2@agent2-1, 3@agent3-1)"},
		{"two live attempts at once", func(o *observations) {
			o.Execs = append(o.Execs, execution{Run: "r2", Stage: "build", Attempt: 2, Agent: "agent3-1", PID: 7, Start: at(12), End: at(13)})
		}, "overlaps by cause: map[fencing:1]"},
		{"an attempt outlived its killed agent", func(o *observations) { o.Execs[0].End = at(5) }, "map[orphan:1]"},
		{"two attempts after the server restart", func(o *observations) {
			o.Execs = append(o.Execs, execution{Run: "r6", Stage: "build", Attempt: 2, Agent: "agent3-1", PID: 7, Start: at(57), End: at(58)},
				execution{Run: "r6", Stage: "build", Attempt: 1, Agent: "agent2-1", PID: 8, Start: at(56), End: at(57.5)})
		}, "map[partition:1]"},
		{"two container attempts seen at once", func(o *observations) {
			o.Execs = append(o.Execs, execution{Run: "r2", Stage: "test", Attempt: 1, Container: true, Start: at(12), End: at(13)},
				execution{Run: "r2", Stage: "test", Attempt: 2, Container: true, Start: at(13), End: at(14)})
		}, "1 stages executed by two attempts at once"},
		{"over the WIP limit by the documents", func(o *observations) { doc(o, "r4").Admitted = at(25) }, "2 runs of one repository in flight at once by the run documents"},
		{"over the WIP limit by the records", func(o *observations) {
			o.Execs = append(o.Execs, execution{Run: "r5", Stage: "build", Attempt: 1, Agent: "agent2-1", PID: 9, Start: at(33), End: at(34)})
		}, "2 runs of one repository executing at once by the stage records"},
		{"two runs of a group at once", func(o *observations) {
			o.WIP = 2
			doc(o, "r3").Admitted = at(15)
		}, "2 runs of one concurrency group in flight at once"},
		{"a lease left", func(o *observations) { o.Leases = []string{"lease.acme_2fapi.0"} }, "1 leases and group locks left"},
		{"a workspace left", func(o *observations) { o.Workspaces = []string{"agent1/r1"} }, "1 workspaces left on agents"},
		{"a container left", func(o *observations) { o.Containers = []string{"weft-r1-test-1"} }, "1 containers left"},
		{"a panic", func(o *observations) { o.Panics = []string{"agent1-3.log: panic: boom"} }, "1 processes panicked"},
		{"a slow takeover", func(o *observations) { o.MaxRecovery = time.Second }, "restarted 2.5s after the kill, limit 1s"},
		{"no agent kill", func(o *observations) { o.Kills = o.Kills[1:] }, "vacuous: no agent was killed"},
		{"a dispatcher never killed", func(o *observations) { o.Kills = o.Kills[:2] }, "vacuous: dispatcher2 was never killed"},
		{"no server restart", func(o *observations) { o.Kills = o.Kills[:3] }, "vacuous: the server was restarted 0 times"},
		{"no client cancel mid-run", func(o *observations) {
			o.Runs[5].CancelledRunning = false
			doc(o, "r6").Stages = nil
		}, "vacuous: no run was cancelled by the client while a stage ran"},
		{"nobody waited", func(o *observations) { o.WIP = 9 }, "vacuous: only 0 of 7 runs were admitted from the waiting list"},
		{"no host records", func(o *observations) { o.Execs = nil }, "vacuous: no host stage recorded its execution"},
		{"containers on but none seen", func(o *observations) { o.ContainersOn = true }, "vacuous: no container stage was seen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := cleanChaos()
			tt.mutate(o)
			res := check(o)
			if res.OK || !strings.Contains(strings.Join(res.Problems, "\n"), tt.want) {
				t.Errorf("check = ok %t, problems %q; want one with %q", res.OK, res.Problems, tt.want)
			}
		})
	}
}

func TestCheckCountsAFinishPublishedTwiceOnce(t *testing.T) {
	o := cleanChaos()
	o.Events = append(o.Events, o.Events[2]) // the same attempt's finish again
	if res := check(o); !res.OK || res.FinishedTwice != 0 {
		t.Errorf("check = finished twice %d, problems %q; want 0 and none", res.FinishedTwice, res.Problems)
	}
}

func TestCheckTellsALateFinishFromASecondRun(t *testing.T) {
	// r2's build attempt 1 ended at 12 s while its agent was cut off;
	// attempt 2 ran from 15 s, and attempt 1's success was stored after.
	o := cleanChaos()
	o.Execs[1].End = at(12)
	o.Execs = append(o.Execs, execution{Run: "r2", Stage: "build", Attempt: 2, Agent: "agent3-1", PID: 7, Start: at(15), End: at(16), Ended: true})
	o.Events = append(o.Events,
		wire.Event{Type: wire.Started, RunID: "r2", Stage: "build", Attempt: 2, Agent: "agent3-1", Time: at(15)},
		wire.Event{Type: wire.Finished, RunID: "r2", Stage: "build", Attempt: 2, Agent: "agent3-1", Time: at(16)},
		wire.Event{Type: wire.Finished, RunID: "r2", Stage: "build", Attempt: 1, Agent: "agent2-1", Time: at(12)})
	res := check(o)
	if !res.OK || res.FinishedTwice != 0 || len(res.RanAgainAfterLateFinish) != 1 {
		t.Errorf("check = finished twice %d, late %q, problems %q; want 0, r1/build, none", res.FinishedTwice, res.RanAgainAfterLateFinish, res.Problems)
	}
}

func TestPlanCoversEveryKindInEveryRepository(t *testing.T) {
	runs := plan(60, 3, rand.New(rand.NewPCG(1, 2)))
	if len(runs) != 60 {
		t.Fatalf("plan(60, 3) has %d runs", len(runs))
	}
	kinds := map[string]map[runKind]int{}
	for i, r := range runs {
		if r.Index != i {
			t.Errorf("run %d has index %d", i, r.Index)
		}
		if kinds[r.Repo] == nil {
			kinds[r.Repo] = map[runKind]int{}
		}
		kinds[r.Repo][r.Kind]++
	}
	if len(kinds) != 3 {
		t.Fatalf("plan(60, 3) uses %d repositories", len(kinds))
	}
	for repo, k := range kinds {
		for _, want := range []runKind{kindPlain, kindGroup, kindSuperseded, kindLatest, kindCancel, kindCancelEarly} {
			if k[want] == 0 {
				t.Errorf("repository %s has no %s run: %v", repo, want, k)
			}
		}
		if k[kindLatest] != 1 {
			t.Errorf("repository %s has %d latest runs, want 1", repo, k[kindLatest])
		}
	}
	// Each repository starts with a superseded run and two runs of one
	// group.
	for i := range 3 {
		if runs[i].Kind != kindSuperseded || runs[3+i].Group != "deploy-main" || runs[6+i].Group != "deploy-main" {
			t.Errorf("repository %d starts with %s, %s, %s; want superseded and two deploy-main runs", i, runs[i].Kind, runs[3+i].Group, runs[6+i].Group)
		}
	}
}

func TestParseContainerID(t *testing.T) {
	tests := []struct {
		id, run, stage string
		attempt        int
		ok             bool
	}{
		{"weft-01M8SNTTTZ7P7ZSM6G0X4YXJQZ-test-2-3", "01M8SNTTTZ7P7ZSM6G0X4YXJQZ", "test", 2, true},
		{"weft-01M8SNTTTZ7P7ZSM6G0X4YXJQZ-unit-tests-11-12", "01M8SNTTTZ7P7ZSM6G0X4YXJQZ", "unit-tests", 11, true},
		{"weft-short-test-1-1", "", "", 0, false},
		{"other-01M8SNTTTZ7P7ZSM6G0X4YXJQZ-test-1-1", "", "", 0, false},
		{"weft-01M8SNTTTZ7P7ZSM6G0X4YXJQZ-test-x-1", "", "", 0, false},
		{"weft-01M8SNTTTZ7P7ZSM6G0X4YXJQZ-test-1", "", "", 0, false},
	}
	for _, tt := range tests {
		run, stage, attempt, ok := parseContainerID(tt.id)
		if run != tt.run || stage != tt.stage || attempt != tt.attempt || ok != tt.ok {
			t.Errorf("parseContainerID(%q) = %q, %q, %d, %t; want %q, %q, %d, %t", tt.id, run, stage, attempt, ok, tt.run, tt.stage, tt.attempt, tt.ok)
		}
	}
}

// A process that is gone has no PID namespace: the sampler must not count
// it as a second container of its attempt (it once reported a stage "run
// twice by attempts 1 and 1" that way).
func TestPIDNamespaceOfAGoneProcessIsNotRead(t *testing.T) {
	own, ok := pidNamespace(os.Getpid())
	if !ok || own == 0 {
		t.Fatalf("pidNamespace(self) = %d, %t; want a namespace", own, ok)
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if n, ok := pidNamespace(cmd.Process.Pid); ok {
		t.Errorf("pidNamespace of exited pid %d = %d, true; want false", cmd.Process.Pid, n)
	}
}
