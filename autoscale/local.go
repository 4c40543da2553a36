package autoscale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"syscall"

	"github.com/oklog/ulid/v2"
	"github.com/rs/zerolog"
)

// ErrClosed is returned by Local.Scale once Close was called.
var ErrClosed = errors.New("autoscale: closed")

// LocalConfig configures Local.
type LocalConfig struct {
	// Executable is the weft binary the agents run; empty is this
	// process's own (os.Executable).
	Executable string
	// Server is the fleet's URL the agents join (weft agent --join);
	// required.
	Server string
	// Creds is the agents' credentials file (--creds); empty gives none.
	Creds string
	// JSDomain is the JetStream domain of the fleet's streams
	// (--js-domain); empty gives none.
	JSDomain string
	// Slots is each agent's --slots; 0 leaves the agent's default.
	Slots int
	// Executor is each agent's --executor; empty leaves the agent's
	// default.
	Executor string
	// Env is the agents' environment; nil is this process's.
	Env []string
	// Output receives the agents' stdout and stderr; nil discards them.
	// An *os.File is handed to them as it is.
	Output io.Writer
	// Logger receives the agents' starts and exits.
	Logger zerolog.Logger
}

// Local is the Actuator that runs agents as child processes of this one:
// `weft agent --join URL --queue Q --id ULID` and the flags of its
// LocalConfig, one queue per agent. It scales a queue down by SIGTERM to
// the newest agent it started for it, which drains: it takes no more
// jobs, finishes the stages it runs and exits. It never stops an agent
// it did not start. Its agents get SIGTERM too should this process die
// (Pdeathsig), so none is left behind unmanaged.
type Local struct {
	cfg LocalConfig
	log zerolog.Logger
	// wg counts the goroutines that start and wait for the agents, one
	// per agent; Close waits for them.
	wg sync.WaitGroup
	mu sync.Mutex // guards agents and closed
	// agents are the agents running, oldest first.
	agents []*localAgent
	closed bool
}

// localAgent is one agent Local started.
type localAgent struct {
	id, queue string
	proc      *os.Process
	// stopping says a scale-down sent it SIGTERM; guarded by Local.mu.
	stopping bool
}

// NewLocal returns Local; it starts nothing. Its errors wrap
// ErrInvalidConfig.
func NewLocal(cfg LocalConfig) (*Local, error) {
	if cfg.Server == "" {
		return nil, fmt.Errorf("%w: no server URL for the agents to join", ErrInvalidConfig)
	}
	if cfg.Slots < 0 {
		return nil, fmt.Errorf("%w: slots %d: want 1 or more", ErrInvalidConfig, cfg.Slots)
	}
	if cfg.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("%w: the weft binary: %w", ErrInvalidConfig, err)
		}
		cfg.Executable = exe
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	return &Local{cfg: cfg, log: cfg.Logger.With().Str("component", "autoscale").Logger()}, nil
}

// Scale starts d.Target - d.Agents agents for d.Queue when the target is
// above the agents, and sends SIGTERM to the newest d.Agents - d.Target
// agents it started for the queue when it is below. It returns the
// errors of the agents that could not be started, ErrClosed after Close.
func (l *Local) Scale(_ context.Context, d Decision) error {
	if d.Target < d.Agents {
		l.stop(d.Queue, d.Agents-d.Target)
		return nil
	}
	var errs []error
	for range d.Target - d.Agents {
		if err := l.start(d.Queue); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Removable returns the agents of queue it started that still run and
// were not asked to stop.
func (l *Local) Removable(queue string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.agents {
		if a.queue == queue && !a.stopping {
			n++
		}
	}
	return n
}

// Running returns the ids of the agents it started that still run, by
// queue.
func (l *Local) Running() map[string][]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string][]string{}
	for _, a := range l.agents {
		out[a.queue] = append(out[a.queue], a.id)
	}
	return out
}

// Interrupt sends SIGINT to every agent it started: they stop their
// stages at once, hand their jobs back to the fleet and exit.
func (l *Local) Interrupt() {
	l.signalAll(syscall.SIGINT)
}

// Close sends SIGTERM to every agent it started, which drain (finish
// their stages and exit), and waits for all of them to exit. After Close,
// Scale starts nothing.
func (l *Local) Close() error {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	l.signalAll(syscall.SIGTERM)
	l.wg.Wait()
	return nil
}

func (l *Local) signalAll(sig os.Signal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range l.agents {
		_ = a.proc.Signal(sig) // one that just exited is on its way out of the list
	}
}

// stop sends SIGTERM to the newest n agents of queue not yet stopping.
func (l *Local) stop(queue string, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range slices.Backward(l.agents) {
		if n == 0 {
			return
		}
		if a.queue != queue || a.stopping {
			continue
		}
		if err := a.proc.Signal(syscall.SIGTERM); err != nil {
			continue // it has exited already
		}
		a.stopping = true
		n--
		l.log.Info().Str("agent", a.id).Str("queue", queue).Int("pid", a.proc.Pid).Msg("draining an agent (SIGTERM)")
	}
}

// args returns the command line of agent id serving queue.
func (l *Local) args(id, queue string) []string {
	args := []string{"agent", "--join", l.cfg.Server, "--id", id, "--queue", queue}
	if l.cfg.Creds != "" {
		args = append(args, "--creds", l.cfg.Creds)
	}
	if l.cfg.JSDomain != "" {
		args = append(args, "--js-domain", l.cfg.JSDomain)
	}
	if l.cfg.Slots > 0 {
		args = append(args, "--slots", strconv.Itoa(l.cfg.Slots))
	}
	if l.cfg.Executor != "" {
		args = append(args, "--executor", l.cfg.Executor)
	}
	return args
}

// start starts an agent for queue, and a goroutine that waits for it.
// Scale and Close run on one goroutine, so wg.Go never races wg.Wait.
func (l *Local) start(queue string) error {
	id := ulid.Make().String()
	started := make(chan error, 1)
	l.wg.Go(func() {
		// Pdeathsig fires when the thread that started the child exits:
		// keep this goroutine on its thread until the agent is gone.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cmd := exec.Command(l.cfg.Executable, l.args(id, queue)...)
		cmd.Env, cmd.Stdout, cmd.Stderr = l.cfg.Env, l.cfg.Output, l.cfg.Output
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
		// Started and listed under mu: Interrupt and Close signal every
		// agent that started, and none starts after Close.
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			started <- ErrClosed
			return
		}
		if err := cmd.Start(); err != nil {
			l.mu.Unlock()
			started <- fmt.Errorf("start agent %s for queue %s: %w", id, queue, err)
			return
		}
		a := &localAgent{id: id, queue: queue, proc: cmd.Process}
		l.agents = append(l.agents, a)
		l.mu.Unlock()
		started <- nil
		l.log.Info().Str("agent", id).Str("queue", queue).Int("pid", cmd.Process.Pid).Msg("started an agent")
		err := cmd.Wait()
		l.mu.Lock()
		l.agents = slices.DeleteFunc(l.agents, func(b *localAgent) bool { return b == a })
		l.mu.Unlock()
		ev := l.log.Info()
		if err != nil {
			ev = l.log.Warn().Err(err)
		}
		ev.Str("agent", id).Str("queue", queue).Msg("agent exited")
	})
	return <-started
}
