package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/weft-ci/weft/internal/procs"
)

// Kinds of fleet members.
const (
	memberServer     = "server"
	memberDispatcher = "dispatcher"
	memberAgent      = "agent"
)

// fleet runs the chaos's weft processes, each member in a goroutine that
// restarts it whenever it is gone: killed by the chaos (after the down
// time the chaos asked for), or exited by itself (after a short backoff,
// as a process manager would). Every process's output goes to
// <dir>/logs/<id>.log.
type fleet struct {
	bin  string
	dir  string
	mark string // CHAOS_MARK=mark is in every process's environment

	// calm is closed when the chaos stops: members skip their down time.
	calm chan struct{}

	mu    sync.Mutex // guards kills and exits
	kills []kill
	exits []exit

	wg sync.WaitGroup // the member goroutines and the process waiters
}

// kill is one SIGKILL the chaos sent.
type kill struct {
	// Kind is server, dispatcher or agent; Member names the member
	// (agent2) and ID the incarnation that was killed (agent2-5).
	Kind, Member, ID string
	// At is when the process was gone.
	At time.Time
}

// exit is a process that ended by itself.
type exit struct {
	ID   string
	Code int
	At   time.Time
}

// member is one process slot of the fleet (a dispatcher, an agent, the
// server), restarted under new incarnation ids: <name>-1, <name>-2, ...
type member struct {
	kind, name string
	// args returns the command line of incarnation id.
	args func(id string) []string
	// kill asks the running incarnation to be SIGKILLed and restarted
	// after a down time; unbuffered, so a member that is down already
	// takes no kill.
	kill chan killRequest
}

// killRequest asks a member for a SIGKILL.
type killRequest struct {
	// down is how long the member stays down.
	down time.Duration
	// killed receives the time the process was gone; buffered.
	killed chan time.Time
}

func newFleet(bin, dir, mark string) *fleet {
	return &fleet{bin: bin, dir: dir, mark: mark, calm: make(chan struct{})}
}

// add starts a member that runs until ctx ends; then its process gets
// SIGINT and, after stopGrace, SIGKILL.
func (f *fleet) add(ctx context.Context, kind, name string, args func(id string) []string) *member {
	m := &member{kind: kind, name: name, args: args, kill: make(chan killRequest)}
	f.wg.Go(func() { f.run(ctx, m) })
	return m
}

// sigkill asks m to be killed and to stay down for down. It returns a
// channel that receives when the process was gone, or nil when m was not
// up to take the kill.
func (m *member) sigkill(down time.Duration) <-chan time.Time {
	req := killRequest{down: down, killed: make(chan time.Time, 1)}
	select {
	case m.kill <- req:
		return req.killed
	default:
		return nil
	}
}

// stopGrace is how long a stopped process has to exit after SIGINT.
const stopGrace = 20 * time.Second

// restartBackoff is how long a member waits before restarting a process
// that exited by itself (one that could not connect while the server was
// down, say).
const restartBackoff = 300 * time.Millisecond

func (f *fleet) run(ctx context.Context, m *member) {
	// Processes get Pdeathsig so they die with this one, and Pdeathsig
	// fires when the thread that started them exits: keep this
	// goroutine on one thread while its processes live.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for n := 1; ctx.Err() == nil; n++ {
		id := fmt.Sprintf("%s-%d", m.name, n)
		p, err := f.spawn(id, m.args(id))
		if err != nil {
			f.exited(id, -1)
			if !pause(ctx, nil, restartBackoff) {
				return
			}
			continue
		}
		select {
		case <-ctx.Done():
			p.stop()
			return
		case <-p.done:
			f.exited(id, p.code)
			if !pause(ctx, nil, restartBackoff) {
				return
			}
		case req := <-m.kill:
			_ = p.cmd.Process.Kill()
			<-p.done
			at := time.Now()
			req.killed <- at
			f.mu.Lock()
			f.kills = append(f.kills, kill{Kind: m.kind, Member: m.name, ID: id, At: at})
			f.mu.Unlock()
			if !pause(ctx, f.calm, req.down) {
				return
			}
		}
	}
}

// pause waits for d, or until cut is closed; it reports false when ctx
// ended first. It spaces faults; it never waits for a condition.
func pause(ctx context.Context, cut <-chan struct{}, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-cut:
	case <-t.C:
	}
	return true
}

func (f *fleet) exited(id string, code int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exits = append(f.exits, exit{ID: id, Code: code, At: time.Now()})
}

// fleetProc is one running incarnation.
type fleetProc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process exited; code is set
	code int
}

func (f *fleet) spawn(id string, args []string) (*fleetProc, error) {
	log, err := os.OpenFile(filepath.Join(f.dir, "logs", id+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log of %s: %w", id, err)
	}
	cmd := exec.Command(f.bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "WEFT_LOG_LEVEL=info", "CHAOS_AGENT="+id, "CHAOS_MARK="+f.mark)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", id, err)
	}
	p := &fleetProc{cmd: cmd, done: make(chan struct{})}
	f.wg.Go(func() {
		err := cmd.Wait()
		log.Close()
		p.code = 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
		close(p.done)
	})
	return p, nil
}

// stop ends the process with SIGINT (an agent stops its stages at once
// rather than draining, as SIGTERM would make it), and SIGKILL after
// stopGrace.
func (p *fleetProc) stop() {
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// usageError returns the log of a process that exited with a usage error
// (exit code 2: a flag this binary does not know, say), which no restart
// will cure; "" when there was none.
func (f *fleet) usageError() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.exits {
		if e.Code == 2 {
			data, _ := os.ReadFile(filepath.Join(f.dir, "logs", e.ID+".log"))
			return e.ID + ": " + strings.TrimSpace(string(data))
		}
	}
	return ""
}

// record returns the kills and the exits so far.
func (f *fleet) record() ([]kill, []exit) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]kill(nil), f.kills...), append([]exit(nil), f.exits...)
}

// sweep SIGKILLs every process left with this fleet's mark in its
// environment (the stages of killed agents and whatever they started) and
// returns how many there were.
func (f *fleet) sweep() int {
	n := 0
	for _, pid := range procs.WithEnv("CHAOS_MARK=" + f.mark) {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

// panics returns the log files that report a Go panic, a fatal runtime
// error or a data race, with the line that says so.
func (f *fleet) panics() []string {
	logs, _ := filepath.Glob(filepath.Join(f.dir, "logs", "*.log"))
	var out []string
	for _, l := range logs {
		data, err := os.ReadFile(l)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ") || strings.Contains(line, "WARNING: DATA RACE") {
				out = append(out, filepath.Base(l)+": "+line)
				break
			}
		}
	}
	return out
}

// freePort returns a loopback TCP port nobody listens on now, so the
// server can be restarted on the same address.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
