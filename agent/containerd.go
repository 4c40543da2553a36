package agent

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/stagenet"
	"github.com/weft-ci/weft/wire"
)

// Executor modes of Config.Executor.
const (
	// ExecutorAuto runs stages with an image in containerd and the others
	// as host processes.
	ExecutorAuto = "auto"
	// ExecutorProcess runs every stage as a host process; stages with an
	// image fail.
	ExecutorProcess = "process"
	// ExecutorContainerd runs every stage in containerd; stages without an
	// image fail.
	ExecutorContainerd = "containerd"
)

// containerExecutor runs a stage in a containerd container.
type containerExecutor struct {
	rt    *container.Runtime
	agent string
}

func (c containerExecutor) run(ctx context.Context, spec execSpec, started func(time.Time), out func(stream, line string)) result {
	pr, pw, err := os.Pipe()
	if err != nil {
		return result{exitCode: -1, category: wire.CategoryInfra, message: fmt.Sprintf("pipe: %v", err)}
	}
	var reader sync.WaitGroup
	reader.Go(func() { readLines(pr, streamOutput, out) })
	j := spec.job
	res := c.rt.Run(ctx, container.Spec{
		// One container per delivery: an attempt number can repeat (see
		// execSpec.delivery), and containerd keeps a dead task's state
		// under its container id for a while after it is removed.
		ID:        fmt.Sprintf("weft-%s-%s-%d-%d", j.RunID, j.Stage.Key, j.Attempt, spec.delivery),
		Image:     spec.image,
		Script:    "exec 2>&1\n" + script(spec.commands),
		Env:       spec.env,
		Workspace: spec.dir,
		NetNS:     netPath(spec.net),
		CPUs:      j.Stage.Resources.CPUs,
		Memory:    j.Stage.Resources.Memory,
		Labels: map[string]string{
			"weft.agent":   c.agent,
			"weft.run":     j.RunID,
			"weft.stage":   j.Stage.Key,
			"weft.attempt": strconv.Itoa(j.Attempt),
		},
	}, started, pw)
	pw.Close()
	closeAfter(&reader, 2*time.Second, pr)
	switch {
	case res.Err != nil:
		return result{exitCode: -1, category: wire.CategoryInfra, message: res.Err.Error()}
	case res.OOM:
		return result{exitCode: res.ExitCode, category: wire.CategoryOOM,
			message: fmt.Sprintf("killed for exceeding its memory limit of %d bytes", j.Stage.Resources.Memory)}
	case res.ExitCode == 0 && !res.Stopped:
		return result{exitCode: 0}
	case res.Stopped:
		return result{exitCode: res.ExitCode, category: wire.CategoryCommand, message: "stopped"}
	default:
		return result{exitCode: res.ExitCode, category: wire.CategoryCommand, message: fmt.Sprintf("exit status %d", res.ExitCode)}
	}
}

// executorFor returns the executor of a job, or nil and why this agent
// cannot run it.
func (a *Agent) executorFor(j *wire.Job) (executor, string) {
	if j.Stage.Image == "" {
		if a.cfg.Executor == ExecutorContainerd {
			return nil, "this agent runs containers only (--executor containerd) and the stage names no image"
		}
		return a.process, ""
	}
	if a.cfg.Executor == ExecutorProcess {
		return nil, fmt.Sprintf("stage needs image %q and this agent runs host processes only (--executor process)", j.Stage.Image)
	}
	if a.containers == nil {
		return nil, fmt.Sprintf("stage needs image %q and containerd is not available to this agent: %v", j.Stage.Image, a.containerdErr)
	}
	return containerExecutor{rt: a.containers, agent: a.cfg.ID}, ""
}

// netPath is the network namespace file of a stage's network; "" for the
// agent's own.
func netPath(n *stagenet.Net) string {
	if n == nil {
		return ""
	}
	return n.Path
}
