package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/autoscale"
	"github.com/weft-ci/weft/metrics"
	"github.com/weft-ci/weft/subjects"
)

func autoscaleCommand(g *globals) *cobra.Command {
	var (
		fleet                fleetFlags
		cfg                  autoscale.Config
		schedules            []string
		tz                   string
		upCmd, downCmd       string
		hookTimeout          time.Duration
		slots                int
		executor, agentCreds string
		metricsAddr          string
	)
	cmd := &cobra.Command{
		Use:   "autoscale",
		Short: "Add and remove agents by the depth of their queues",
		Long: `autoscale watches the depth of queues and the agent registry every
--interval and scales each queue's agents between --min and --max. By
default it runs the agents itself, as child processes of this one
(weft agent --join SERVER --queue Q, with --slots, --executor and
--agent-creds); with --up-cmd (and --down-cmd) it runs those commands
instead, for agents started elsewhere.

Each queue, at each interval, the first rule that holds decides:
  - after a change, wait until the registry shows it (at most --settle);
  - fewer agents than the minimum: up to it at once;
  - jobs waiting and no agent: up to one, whatever the threshold;
  - at least --threshold jobs waiting: one agent more, up to --max
    (hold-at-max there);
  - nothing waiting and nothing running for --cooldown: one agent less,
    down to the minimum;
  - otherwise hold.
A scale-up resets the idle clock, so no queue flaps. Every agent the
registry shows serving a queue counts, whoever started it; only the
agents this process started are removed (the newest first, by SIGTERM,
which drains it: it finishes its stages and exits). A down hook chooses
what it removes.

Schedule: --schedule "Mon-Fri 08:00-18:00 min=4" raises the minimum while
it is in force (repeatable; the highest applies). DAYS are Mon to Sun,
ranges (Mon-Fri) and lists (Sat,Sun); the time range is HH:MM-HH:MM in
--tz (an end at or before the start crosses midnight); without one the
rule holds all day.

Hooks: --up-cmd and --down-cmd run with sh -c, with WEFT_QUEUE, WEFT_AGENTS
(the agents the registry shows), WEFT_TARGET (the agents wanted) and
WEFT_SERVER in their environment, one at a time, for at most
--hook-timeout each. A hook should bring the queue to WEFT_TARGET agents;
one that fails is logged and counted, and asked again at the next
decision. Without --down-cmd the queue is never scaled down (start the
agents with weft agent --exit-when-idle).

Every decision is logged (queue, waiting, running, agents, target, min,
action, reason): changes at info, the level autoscale logs at unless
--log-level says otherwise, the rest at debug. --metrics serves weft_autoscale_decisions_total{queue,action},
weft_autoscale_agents{queue} (the agents the registry shows),
weft_autoscale_target_agents{queue}, weft_autoscale_min_agents{queue},
weft_autoscale_managed_agents{queue} (those it started) and
weft_autoscale_hook_failures_total{queue}.

SIGTERM stops it: the agents it started drain and it waits for them.
SIGINT stops them at once (their stages are handed back to the fleet).

` + exitCodesHelp,
		Example: "  weft autoscale --server nats://ci:4222 --queue main --max 6 --threshold 2 --cooldown 5m \\\n" +
			"    --schedule \"Mon-Fri 08:00-18:00 min=4\" --tz Europe/Berlin --executor containerd\n" +
			"  weft autoscale --server nats://ci:4222 --queue pr --max 4 \\\n" +
			"    --up-cmd 'systemctl start weft-agent@$WEFT_QUEUE-$WEFT_TARGET' \\\n" +
			"    --down-cmd 'systemctl stop weft-agent@$WEFT_QUEUE-$WEFT_AGENTS'",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			for _, q := range cfg.Queues {
				if err := subjects.ValidateQueue(q); err != nil {
					return withCode(exitUsage, fmt.Errorf("--queue: %w", err))
				}
			}
			loc := time.Local
			if tz != "" {
				var err error
				if loc, err = time.LoadLocation(tz); err != nil {
					return withCode(exitUsage, fmt.Errorf("--tz %q: %w", tz, err))
				}
			}
			var err error
			if cfg.Policy.Schedule, err = autoscale.ParseSchedule(schedules, loc); err != nil {
				return withCode(exitUsage, fmt.Errorf("--schedule: %w", err))
			}
			if err := cfg.Policy.Validate(); err != nil {
				return withCode(exitUsage, err)
			}
			if slots < 1 {
				return withCode(exitUsage, fmt.Errorf("--slots %d: want 1 or more", slots))
			}
			hooks := upCmd != "" || downCmd != ""
			if hooks {
				if upCmd == "" {
					return withCode(exitUsage, fmt.Errorf("--down-cmd needs an --up-cmd"))
				}
				for _, name := range []string{"slots", "executor", "agent-creds"} {
					if cmd.Flags().Changed(name) {
						return withCode(exitUsage, fmt.Errorf("--%s: for the agents autoscale starts itself, not with --up-cmd", name))
					}
				}
			}

			log := g.logger()
			if !cmd.Flag("log-level").Changed && os.Getenv("WEFT_LOG_LEVEL") == "" {
				log = log.Level(zerolog.InfoLevel) // the decisions are what it is for
			}
			cfg.Logger = log
			b, err := fleet.open(ctx, g, "weft autoscale")
			if err != nil {
				return err
			}
			defer b.Close()
			if hooks {
				cfg.Actuator, err = autoscale.NewHooks(autoscale.HooksConfig{Up: upCmd, Down: downCmd, Server: fleet.server,
					Env: os.Environ(), Output: g.stderr, Timeout: hookTimeout})
				if err != nil {
					return withCode(exitUsage, err)
				}
			} else {
				if agentCreds == "" {
					agentCreds = fleet.creds
				}
				exe, err := os.Executable()
				if err != nil {
					return withCode(exitInfra, fmt.Errorf("the weft binary to start agents with: %w", err))
				}
				local, err := autoscale.NewLocal(autoscale.LocalConfig{Executable: exe, Server: fleet.server, Creds: agentCreds,
					JSDomain: fleet.jsDomain, Slots: slots, Executor: executor, Env: os.Environ(), Output: g.stderr, Logger: log})
				if err != nil {
					return withCode(exitUsage, err)
				}
				cfg.Actuator = local
				// SIGINT stops the agents at once; SIGTERM drains them (Run).
				defer context.AfterFunc(g.interrupted, local.Interrupt)()
			}

			if metricsAddr != "" {
				reg := prometheus.NewRegistry()
				reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
				cfg.Metrics = metrics.NewAutoscale(reg)
				stop, err := serveMetrics(ctx, g, reg, metricsAddr)
				if err != nil {
					return err
				}
				defer stop()
			}
			s, err := autoscale.New(b.JS, cfg)
			if err != nil {
				return withCode(exitUsage, err)
			}
			queues, how := "every queue seen", "local agents"
			if len(cfg.Queues) > 0 {
				queues = "queues " + strings.Join(cfg.Queues, ", ")
			}
			if hooks {
				how = "hooks"
			}
			fmt.Fprintf(g.stderr, "weft: autoscaling %s of %s with %s: %d to %d agents, up at %d waiting, down after %v idle\n",
				queues, fleet.server, how, cfg.Policy.Min, cfg.Policy.Max, cfg.Policy.Threshold, cfg.Policy.Cooldown)
			if err := s.Run(ctx); err != nil {
				return withCode(exitInfra, err)
			}
			fmt.Fprintln(g.stderr, "weft: autoscale stopped")
			return nil
		},
	}
	fleet.add(cmd)
	f := cmd.Flags()
	f.StringSliceVar(&cfg.Queues, "queue", nil, "queue to scale (repeatable; default every queue seen in the jobs stream or the registry)")
	f.IntVar(&cfg.Policy.Min, "min", autoscale.DefaultMin, "agents each queue keeps however idle")
	f.IntVar(&cfg.Policy.Max, "max", autoscale.DefaultMax, "most agents of each queue")
	f.IntVar(&cfg.Policy.Threshold, "threshold", autoscale.DefaultThreshold, "jobs waiting at which a queue gets one agent more")
	f.DurationVar(&cfg.Policy.Cooldown, "cooldown", autoscale.DefaultCooldown, "time with nothing waiting and nothing running before a queue loses an agent")
	f.DurationVar(&cfg.Policy.Settle, "settle", autoscale.DefaultSettle, "most time a change waits for the registry to show it before the next")
	f.DurationVar(&cfg.Interval, "interval", autoscale.DefaultInterval, "how often the queues are read and decided on")
	f.StringArrayVar(&schedules, "schedule", nil, `raise the minimum at hours of the week, "DAYS [HH:MM-HH:MM] min=N" (repeatable; see Schedule)`)
	f.StringVar(&tz, "tz", "", "time zone of --schedule, such as Europe/Berlin (default local time, which TZ sets)")
	f.StringVar(&upCmd, "up-cmd", "", "shell command that adds agents, instead of starting them here (see Hooks)")
	f.StringVar(&downCmd, "down-cmd", "", "shell command that removes an agent (see Hooks)")
	f.DurationVar(&hookTimeout, "hook-timeout", autoscale.DefaultHookTimeout, "most time a hook runs before it is killed")
	f.IntVar(&slots, "slots", 1, "stages each agent started here runs at once")
	f.StringVar(&executor, "executor", "", "executor of the agents started here: auto, process or containerd (default the agent's)")
	f.StringVar(&agentCreds, "agent-creds", "", "credentials of the agents started here, such as weft creds agent --queue Q (default --creds)")
	f.StringVar(&metricsAddr, "metrics", os.Getenv("WEFT_METRICS_LISTEN"), "serve Prometheus metrics on http://ADDR/metrics (decisions by queue and action, agents, targets, minimums, hook failures); port 0 picks a free one (env WEFT_METRICS_LISTEN)")
	return cmd
}
