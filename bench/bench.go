package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/embedded"
	"github.com/weft-ci/weft/wire"
)

// Options size the scenarios.
type Options struct {
	// Jobs is the size of the low-tier and background bursts; default 1000.
	Jobs int
	// Slots is the number of agent slots on the saturated queue; default 2.
	Slots int
	// StageTime is what each burst stage does (sleep); default 10ms.
	StageTime time.Duration
	// Probes is the number of main stages measured per phase in Isolation;
	// default 20.
	Probes int
	// Progress receives one line per step; nil discards them.
	Progress func(format string, args ...any)
	// Logger receives the components' logs.
	Logger zerolog.Logger
}

func (o *Options) defaults() {
	if o.Jobs == 0 {
		o.Jobs = 1000
	}
	if o.Slots == 0 {
		o.Slots = 2
	}
	if o.StageTime == 0 {
		o.StageTime = 10 * time.Millisecond
	}
	if o.Probes == 0 {
		o.Probes = 20
	}
	if o.Progress == nil {
		o.Progress = func(string, ...any) {}
	}
}

// local is a stack in this process (package embedded), in a temporary
// directory.
type local struct {
	st  *embedded.Stack
	b   *bus.Bus
	dir string
}

func start(ctx context.Context, dcfg dispatcher.Config, log zerolog.Logger) (*local, error) {
	dir, err := os.MkdirTemp("", "weft-bench-")
	if err != nil {
		return nil, err
	}
	st, err := embedded.Start(ctx, embedded.Config{
		Bus: bus.Config{StoreDir: filepath.Join(dir, "js")}, Dispatchers: 1, Dispatcher: dcfg, Logger: log,
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &local{st: st, b: st.Bus, dir: dir}, nil
}

func (e *local) agent(queue string, slots int) error {
	_, err := e.st.AddAgent(agent.Config{
		Queues: []string{queue}, Slots: slots, WorkDir: filepath.Join(e.dir, "work-"+queue),
		Env: os.Environ(), Executor: agent.ExecutorProcess,
	})
	return err
}

// close stops the components and removes the stack; it is idempotent and
// returns the first error a component stopped with.
func (e *local) close() error {
	err := e.st.Close()
	os.RemoveAll(e.dir)
	return err
}

// submit triggers a run of text with opts applied.
func (e *local) submit(ctx context.Context, text string, opts ...func(*wire.Trigger)) (string, error) {
	t := wire.Trigger{ID: ulid.Make().String(), File: "bench.yml", Pipeline: text}
	for _, o := range opts {
		o(&t)
	}
	return client.Submit(ctx, e.b.JS, t)
}

// wait follows a run to its end.
func (e *local) wait(ctx context.Context, id string) (*wire.Run, error) {
	return client.Follow(ctx, e.b.JS, id, func(client.Update) {})
}

// burst returns pipelines with n stages in all that each sleep for d on
// queue, in runs of at most 50 stages.
func burst(name, queue string, n int, d time.Duration) []string {
	var out []string
	for i := 0; i < n; i += 50 {
		var sb strings.Builder
		fmt.Fprintf(&sb, "name: %s-%d\nqueue: %s\nstages:\n", name, i/50, queue)
		for j := i; j < min(i+50, n); j++ {
			fmt.Fprintf(&sb, "  - key: s%d\n    commands: [sleep %g]\n", j, d.Seconds())
		}
		out = append(out, sb.String())
	}
	return out
}

// Percentile returns the p-quantile (0..1) of d, the nearest rank; 0 for
// no samples. d is not changed.
func Percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// weftBinary sets *bin, when empty, to this executable: the weft binary
// the process scenarios start. what names the scenario in the error.
func weftBinary(bin *string, what string) error {
	if *bin != "" {
		return nil
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("%s: find the weft binary: %w", what, err)
	}
	*bin = exe
	return nil
}
