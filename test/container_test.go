package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/internal/busybox"
	"github.com/weft-ci/weft/wire"
)

// stageLines returns the output lines of each stage.
func stageLines(updates []client.Update) map[string][]string {
	out := map[string][]string{}
	for _, u := range updates {
		if u.Line != nil {
			out[u.Line.Stage] = append(out[u.Line.Stage], u.Line.Text)
		}
	}
	return out
}

func TestContainerStagesShareTheWorkspaceWithHostStages(t *testing.T) {
	t.Parallel()
	Containerd(t)
	if _, err := os.Stat("/etc/debian_version"); err != nil {
		t.Fatalf("precondition: the host has /etc/debian_version: %v", err)
	}
	s := StartStack(t, StackConfig{Slots: 2})
	r, updates := s.Run(t, `name: ws
stages:
  - key: make
    image: `+busybox.Ref+`
    commands:
      - test -x /bin/busybox
      - test ! -e /etc/debian_version
      - echo "from the container" > /workspace/out.txt
      - pwd
  - key: host-read
    depends_on: [make]
    commands: [cat out.txt]
  - key: container-read
    depends_on: [make]
    image: `+busybox.Ref+`
    commands: [cat /workspace/out.txt]
`)
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s: %+v", r.State, r.Stages)
	}
	lines := stageLines(updates)
	for stage, want := range map[string]string{"make": "/workspace", "host-read": "from the container", "container-read": "from the container"} {
		if got := strings.Join(lines[stage], "\n"); got != want {
			t.Errorf("%s printed %q, want %q", stage, got, want)
		}
	}
}

func TestContainerResourceLimits(t *testing.T) {
	t.Parallel()
	Containerd(t)
	s := StartStack(t, StackConfig{Slots: 2})
	r, updates := s.Run(t, `name: limits
stages:
  - key: hog
    image: `+busybox.Ref+`
    resources: {memory: 32Mi}
    commands: [dd if=/dev/zero of=/dev/null bs=200M count=1]
  - key: half
    image: `+busybox.Ref+`
    resources: {cpus: 0.5}
    commands: ['cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null || cat /sys/fs/cgroup/cpu.max']
`)
	if hog := r.Stage("hog"); hog.State != wire.StageFailed || hog.Category != wire.CategoryOOM {
		t.Errorf("hog = %s, category %q, want failed with category oom", hog.State, hog.Category)
	}
	got := strings.Join(stageLines(updates)["half"], " ")
	if got != "50000 100000" {
		t.Errorf("half's cgroup shows quota/period %q, want \"50000 100000\" (50%% of a CPU)", got)
	}
}

// stubborn is a container stage whose PID 1 (and its child) ignore SIGTERM.
const stubborn = `name: stubborn
stages:
  - key: sleep
    image: ` + busybox.Ref + `
    timeout: %s
    commands: ["trap '' TERM", "sleep 60"]
`

func TestContainerTimeoutKillsAStageThatIgnoresSIGTERM(t *testing.T) {
	t.Parallel()
	Containerd(t)
	grace := time.Second
	s := StartStack(t, StackConfig{KillGrace: grace})
	r, _ := s.Run(t, strings.Replace(stubborn, "%s", "2s", 1))
	st := r.Stage("sleep")
	if st.State != wire.StageFailed || st.Category != wire.CategoryTimeout {
		t.Fatalf("stage = %s, category %q, want failed with category timeout", st.State, st.Category)
	}
	if took := st.Finished.Sub(st.Started); took > 2*time.Second+grace+2*time.Second {
		t.Errorf("stage took %v, want at most timeout + grace + 2s", took)
	}
}

func TestContainerCancelKillsAStageThatIgnoresSIGTERM(t *testing.T) {
	t.Parallel()
	Containerd(t)
	grace := time.Second
	s := StartStack(t, StackConfig{KillGrace: grace})
	id := s.Submit(t, strings.Replace(stubborn, "%s", "10m", 1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cancelled time.Time
	r, err := client.Follow(ctx, s.Bus.JS, id, func(u client.Update) {
		if u.Stage != nil && u.Stage.State == wire.StageRunning && cancelled.IsZero() {
			cancelled = time.Now()
			if err := client.Cancel(ctx, s.Bus.JS, id, "test"); err != nil {
				t.Error(err)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.State != wire.RunCancelled || r.Stage("sleep").State != wire.StageCancelled {
		t.Fatalf("run %s, stage %s; want both cancelled", r.State, r.Stage("sleep").State)
	}
	if took := r.Stage("sleep").Finished.Sub(cancelled); took > grace+2*time.Second {
		t.Errorf("the stage stopped %v after the cancel, want at most grace + 2s", took)
	}
}

func TestContainerMissingImageIsAnInfraFailure(t *testing.T) {
	t.Parallel()
	Containerd(t)
	// One retry of the infrastructure failure, then the stage fails.
	s := StartStack(t, StackConfig{MaxDeliver: 2})
	// A registry on a closed loopback port: the pull fails at once.
	const ref = "127.0.0.1:1/weft/missing:1"
	r, updates := s.Run(t, "name: missing\nstages:\n  - key: s\n    image: "+ref+"\n    commands: [true]\n")
	st := r.Stage("s")
	if lines := strings.Join(stageLines(updates)["s"], "\n"); !strings.Contains(lines, "retrying in 1s (delivery 1 of 2)") {
		t.Errorf("stage log %q, want the infrastructure retry announced", lines)
	}
	if st.State != wire.StageFailed || st.Category != wire.CategoryInfra || !strings.Contains(st.Message, ref) {
		t.Errorf("stage = %s, category %q, message %q; want failed, infra, naming %s", st.State, st.Category, st.Message, ref)
	}
}

func TestAgentStartRemovesLeftoversOfACrashedAgent(t *testing.T) {
	Containerd(t)
	// A container as a crashed agent leaves it: weft labels, an owner pid
	// that no longer runs, a task still running.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	const id = "weft-leftover-test"
	out, err := exec.Command("ctr", "-n", "weft", "run", "-d",
		"--label", container.LabelManaged+"=true",
		"--label", container.LabelOwnerPID+"="+strconv.Itoa(dead.ProcessState.Pid()),
		"--label", container.LabelOwnerBoot+"="+strings.TrimSpace(string(boot)),
		busybox.Ref, id, "sleep", "600").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr run: %v: %s", err, out)
	}
	// Starting an agent cleans up; ctr does not label the snapshot, which
	// goes with its container.
	StartStack(t, StackConfig{})
	rt := Containerd(t)
	if !Eventually(30*time.Second, func() bool {
		ctrs, _, err := rt.Leftovers(context.Background())
		return err == nil && len(ctrs) == 0
	}) {
		ctrs, snaps, _ := rt.Leftovers(context.Background())
		t.Fatalf("after an agent started, leftovers remain: containers %v, snapshots %v", ctrs, snaps)
	}
}

// leaveContainer starts a weft-labelled container id running sleep, as
// the process pid left it.
func leaveContainer(t *testing.T, id string, pid int) {
	t.Helper()
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	out, err := exec.Command("ctr", "-n", "weft", "run", "-d",
		"--label", container.LabelManaged+"=true",
		"--label", container.LabelOwnerPID+"="+strconv.Itoa(pid),
		"--label", container.LabelOwnerBoot+"="+strings.TrimSpace(string(boot)),
		busybox.Ref, id, "sleep", "600").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr run: %v: %s", err, out)
	}
	t.Cleanup(func() {
		_ = exec.Command("ctr", "-n", "weft", "task", "rm", "-f", id).Run()
		_ = exec.Command("ctr", "-n", "weft", "container", "rm", id).Run()
	})
}

// Found by the chaos benchmark: an agent killed while its takeover of a
// stage started left that attempt's container; the next takeover, which
// got the same attempt number (the killed one's start was never
// recorded), failed to create its container ("already exists"), and the
// infrastructure retry's backoff held the stage back for a minute. A
// container left by a process that is gone is removed and the stage runs;
// one of a live process is not touched.
func TestContainerRunReplacesAContainerLeftByADeadAgent(t *testing.T) {
	rt := Containerd(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	const id = "weft-collision-test-3"
	leaveContainer(t, id, dead.ProcessState.Pid())
	var out strings.Builder
	res := rt.Run(context.Background(), container.Spec{ID: id, Image: busybox.Ref, Script: "echo ran", Workspace: t.TempDir()}, func(time.Time) {}, &out)
	if res.Err != nil || res.ExitCode != 0 || !strings.Contains(out.String(), "ran") {
		t.Fatalf("run over a dead agent's container: exit %d, err %v, output %q", res.ExitCode, res.Err, out.String())
	}
	if ctrs, _, _ := rt.Leftovers(context.Background()); slices.Contains(ctrs, id) {
		t.Errorf("container %s left after the run", id)
	}

	const live = "weft-collision-test-4"
	leaveContainer(t, live, os.Getpid())
	res = rt.Run(context.Background(), container.Spec{ID: live, Image: busybox.Ref, Script: "echo ran", Workspace: t.TempDir()}, func(time.Time) {}, &out)
	if res.Err == nil || !strings.Contains(res.Err.Error(), "alive") {
		t.Fatalf("run over a live process's container: err %v, want one saying its process is alive", res.Err)
	}
	if ctrs, _, _ := rt.Leftovers(context.Background()); !slices.Contains(ctrs, live) {
		t.Errorf("the live process's container %s was removed", live)
	}
}

// Found by the chaos benchmark: deliveries of one job can run under the
// same attempt number (an agent killed before its start was recorded,
// then the next), and containerd keeps a dead task's state under its
// container id for a while after the container is removed, so the next
// delivery could not start its container and backed off for a minute.
// Each delivery gets its own container: with the first delivery's id
// taken (here by a live process, which weft must leave alone), the second
// runs the stage.
func TestEachDeliveryOfAContainerStageGetsItsOwnContainer(t *testing.T) {
	Containerd(t)
	s := StartStack(t, StackConfig{NoAgent: true})
	id := s.Submit(t, `name: redeliver
stages:
  - key: c
    image: `+busybox.Ref+`
    commands: [echo ran]
`)
	// The first delivery's container, in the scheme of before (one per
	// attempt) and of now (one per delivery).
	leaveContainer(t, "weft-"+id+"-c-1", os.Getpid())
	leaveContainer(t, "weft-"+id+"-c-1-1", os.Getpid())
	s.AddAgent(agent.Config{WorkDir: s.WorkDir, MaxDeliver: 3})
	r, updates := s.Wait(t, id)
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s: %+v", r.State, r.Stages)
	}
	if got := strings.Join(stageLines(updates)["c"], "\n"); !strings.Contains(got, "ran") {
		t.Errorf("stage c printed %q, want ran", got)
	}
}

// gatedStage prints a line, then waits for a file named gate in its
// workspace.
const gatedStage = `name: gated
stages:
  - key: wait
    image: ` + busybox.Ref + `
    commands:
      - echo waiting
      - while [ ! -f gate ]; do sleep 0.02; done
      - echo through
`

func TestContainerOutputStreamsWhileItRuns(t *testing.T) {
	t.Parallel()
	Containerd(t)
	s := StartStack(t, StackConfig{})
	id := s.Submit(t, gatedStage)
	// The container blocks until the gate exists in its workspace.
	// The gate goes in the run's workspace, which it holds once it runs.
	r, lines := s.FollowOpening(t, id, "waiting", func() string { return filepath.Join(s.Agent.Workspace(id), "gate") })
	if r.State != wire.RunSucceeded || strings.Join(lines, ",") != "waiting,through" {
		t.Errorf("run %s with lines %q, want succeeded with waiting,through", r.State, lines)
	}
}

func TestContainerRemovedWhenTheAgentStopsMidStage(t *testing.T) {
	t.Parallel()
	rt := Containerd(t)
	s := StartStack(t, StackConfig{KillGrace: time.Second})
	id := s.Submit(t, gatedStage)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	mine := func() []string {
		ctrs, snaps, err := rt.Leftovers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range append(ctrs, snaps...) {
			if strings.Contains(n, id) {
				out = append(out, n)
			}
		}
		return out
	}
	if !Eventually(30*time.Second, func() bool { return len(mine()) > 0 }) {
		t.Fatal("the stage's container never appeared")
	}
	s.Stop()
	if left := mine(); len(left) > 0 {
		t.Errorf("after the agent stopped mid-stage, containerd still holds %v", left)
	}
}
