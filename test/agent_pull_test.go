package test

import (
	"os/exec"
	"testing"
	"time"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/wire"
)

func TestAnImagePullLongerThanAckWaitRunsTheStageOnce(t *testing.T) {
	t.Parallel()
	Containerd(t)
	const ackWait = 2 * time.Second
	reg := StartRegistry(t)
	ref, layer := reg.AddBusybox(t, "weft/slow", "pull")
	// The image's own layer takes three AckWaits to download: without
	// heartbeats from the moment the job is taken, the job would be
	// redelivered to the other agent while the first one still pulls, and
	// run by both.
	reg.Delay(layer, 3*ackWait)
	s := StartStack(t, StackConfig{AckWait: ackWait})
	// The other agent stands for another host: its own containerd
	// namespace, so that it does not meet the first agent's container.
	const otherNS = "weft-test-other-host"
	other := s.AddAgent(agent.Config{Containerd: container.Config{Namespace: otherNS}})
	t.Cleanup(func() {
		_ = exec.Command("ctr", "--address", ContainerdAddress(), "-n", otherNS, "images", "rm", ref).Run()
	})
	r, _ := s.Run(t, "name: pull\nstages:\n  - key: s\n    image: "+ref+"\n    commands: [cat /etc/weft-nonce, sleep 2]\n")
	waitIdle(t, s.Agent, other)
	st := r.Stage("s")
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s (%s: %s), want succeeded", r.State, st.Category, st.Message)
	}
	evs := stageEvents(t, s.Bus.JS, r.ID, "s")
	if n := countEvents(evs, wire.Started); n != 1 || st.Attempt != 1 {
		t.Errorf("stage started %d times, attempt %d; want once, attempt 1", n, st.Attempt)
	}
	if took := st.Started.Sub(st.Queued); took < 3*ackWait {
		t.Errorf("the stage started %v after it was queued, want the pull to have taken at least %v", took, 3*ackWait)
	}
}
