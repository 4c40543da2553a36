package autoscale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"time"
)

// HooksConfig configures Hooks.
type HooksConfig struct {
	// Up is the shell command run to add agents; required.
	Up string
	// Down is the shell command run to remove an agent; empty never
	// scales down (agents started with weft agent --exit-when-idle leave
	// by themselves).
	Down string
	// Server is the fleet's URL, given to the hooks as WEFT_SERVER.
	Server string
	// Env is the hooks' environment, before the WEFT_ variables above;
	// nil is this process's.
	Env []string
	// Output receives the hooks' stdout and stderr; nil discards them.
	Output io.Writer
	// Timeout is how long a hook may run before it is killed; 0 is
	// DefaultHookTimeout.
	Timeout time.Duration
}

// Hooks is the Actuator that runs shell commands: `sh -c` with
// WEFT_QUEUE (the queue), WEFT_AGENTS (the agents the registry shows),
// WEFT_TARGET (the agents wanted) and WEFT_SERVER in its environment. A
// hook should bring the queue to WEFT_TARGET agents; the down hook
// chooses which agent to remove. A hook that exits with an error, or
// outlives its timeout, fails the change.
type Hooks struct {
	cfg HooksConfig
}

// NewHooks returns Hooks; its errors wrap ErrInvalidConfig.
func NewHooks(cfg HooksConfig) (*Hooks, error) {
	if cfg.Up == "" {
		return nil, fmt.Errorf("%w: no up hook", ErrInvalidConfig)
	}
	if cfg.Timeout < 0 {
		return nil, fmt.Errorf("%w: hook timeout %v: want more than 0", ErrInvalidConfig, cfg.Timeout)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultHookTimeout
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	return &Hooks{cfg: cfg}, nil
}

// Scale runs the up hook when d.Target is above d.Agents, the down hook
// when it is below, and waits for it.
func (h *Hooks) Scale(ctx context.Context, d Decision) error {
	name, script := "up", h.cfg.Up
	if d.Target < d.Agents {
		name, script = "down", h.cfg.Down
	}
	if script == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", script)
	cmd.Env = append(h.cfg.Env[:len(h.cfg.Env):len(h.cfg.Env)],
		"WEFT_QUEUE="+d.Queue, "WEFT_AGENTS="+strconv.Itoa(d.Agents), "WEFT_TARGET="+strconv.Itoa(d.Target), "WEFT_SERVER="+h.cfg.Server)
	cmd.Stdout, cmd.Stderr = h.cfg.Output, h.cfg.Output
	// A hook that starts an agent in the background may leave it holding
	// the output: do not wait for it once the hook has exited.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	switch {
	case err == nil, errors.Is(err, exec.ErrWaitDelay):
		return nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%s hook of queue %s (target %d): killed after %v: %w", name, d.Queue, d.Target, h.cfg.Timeout, err)
	default:
		return fmt.Errorf("%s hook of queue %s (target %d): %w", name, d.Queue, d.Target, err)
	}
}

// Removable returns -1 with a down hook (it chooses what to remove), 0
// without.
func (h *Hooks) Removable(string) int {
	if h.cfg.Down == "" {
		return 0
	}
	return -1
}

// Close returns nil: a hook has returned before Scale does.
func (h *Hooks) Close() error { return nil }
