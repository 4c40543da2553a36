package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/bench"
)

func benchCommand(g *globals) *cobra.Command {
	var (
		o      bench.Options
		co     bench.ChaosOptions
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "bench [hotfix|isolation|wip|chaos]...",
		Short: "Measure priority, queue isolation and WIP limits on an embedded stack",
		Long: `bench runs scenarios on an embedded stack (nats-server, dispatcher and
host-process agents in this process, state in a temporary directory) and
prints each figure next to its baseline, measured in the same run:

  hotfix     a queue with --slots slots saturated by --jobs low-tier stages,
             then one critical stage: its queue time, against the same
             workload through one FIFO subject
  isolation  the queue time of main stages without and during a burst of
             --jobs stages on the background queue (its own agent)
  wip        20 simultaneous triggers of one repository with WIP limit 3:
             the most runs in flight, how many finished, admission order
  chaos      --runs two-stage runs on --agents agent processes while a
             random agent is SIGKILLed about every second and the
             dispatcher process every 4 seconds: runs lost, stages
             finished twice, time from a kill to the stage's restart

With no scenario it runs hotfix, isolation and wip. Progress goes to stderr.

` + exitCodesHelp,
		Example: "  weft bench\n  weft bench hotfix --jobs 1000 --slots 2 --json",
		Args: usageArgs(func(_ *cobra.Command, args []string) error {
			for _, a := range args {
				if !slices.Contains([]string{"hotfix", "isolation", "wip", "chaos"}, a) {
					return fmt.Errorf("unknown scenario %q: want hotfix, isolation, wip or chaos", a)
				}
			}
			return nil
		}),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				args = []string{"hotfix", "isolation", "wip"}
			}
			o.Logger = g.logger()
			o.Progress = func(format string, a ...any) { fmt.Fprintf(g.stderr, "weft bench: "+format+"\n", a...) }
			results := map[string]any{}
			for _, name := range args {
				var (
					r   any
					err error
				)
				switch name {
				case "hotfix":
					r, err = bench.Hotfix(cmd.Context(), o)
				case "isolation":
					r, err = bench.Isolation(cmd.Context(), o)
				case "wip":
					r, err = bench.WIP(cmd.Context(), o)
				case "chaos":
					co.Progress = o.Progress
					r, err = bench.Chaos(cmd.Context(), co)
				}
				if err != nil {
					return withCode(exitInfra, fmt.Errorf("bench %s: %w", name, err))
				}
				results[name] = r
			}
			if asJSON {
				return json.NewEncoder(g.stdout).Encode(results)
			}
			printBench(g, results)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Jobs, "jobs", 1000, "stages in the low-tier and background bursts")
	f.IntVar(&o.Slots, "slots", 2, "agent slots on the saturated queue")
	f.DurationVar(&o.StageTime, "stage-time", 10*time.Millisecond, "how long each burst stage sleeps")
	f.IntVar(&o.Probes, "probes", 20, "main stages measured per isolation phase")
	f.IntVar(&co.Runs, "runs", 200, "chaos: runs to trigger")
	f.IntVar(&co.Agents, "agents", 3, "chaos: agent processes")
	f.BoolVar(&asJSON, "json", false, "print the results as one JSON document (durations in ns)")
	return cmd
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func printBench(g *globals, results map[string]any) {
	w := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "SCENARIO\tMEASURE\tWEFT\tBASELINE\tRATIO")
	if r, ok := results["hotfix"].(*bench.HotfixResult); ok {
		fmt.Fprintf(w, "hotfix\tcritical queue time behind %d low stages on %d slots\t%s\t%s (FIFO)\t%.0fx faster\n", r.Jobs, r.Slots, ms(r.Critical), ms(r.FIFO), r.Speedup)
		fmt.Fprintf(w, "\tone stage's run time (median); low stages still queued\t%s; %d\t\t\n", ms(r.StageRun), r.Backlog)
	}
	if r, ok := results["isolation"].(*bench.IsolationResult); ok {
		fmt.Fprintf(w, "isolation\tmain queue time p50 during a %d-stage background burst\t%s\t%s (no burst)\t%.2fx\n", r.Burst, ms(r.BusyP50), ms(r.QuietP50), r.Ratio)
		fmt.Fprintf(w, "\tmain queue time p99\t%s\t%s (no burst)\t\n", ms(r.BusyP99), ms(r.QuietP99))
		fmt.Fprintf(w, "\tbackground stages still queued after the last probe\t%d\t\t\n", r.Backlog)
	}
	if r, ok := results["wip"].(*bench.WIPResult); ok {
		fmt.Fprintf(w, "wip\tmost runs in flight (limit %d)\t%d\t\t\n", r.Limit, r.MaxInFlight)
		fmt.Fprintf(w, "\truns finished of %d; admitted in trigger order\t%d; %t\t\t\n", r.Triggers, r.Finished, r.InOrder)
		fmt.Fprintf(w, "\twall time\t%s\t\t\n", ms(r.Total))
	}
	if r, ok := results["chaos"].(*bench.ChaosResult); ok {
		fmt.Fprintf(w, "chaos\truns lost of %d (%d agent kills, %d dispatcher kills)\t%d\t\t\n", r.Runs, r.AgentKills, r.DispatcherKills, r.Lost)
		fmt.Fprintf(w, "\tstages finished twice\t%d\t\t\n", r.FinishedTwice)
		fmt.Fprintf(w, "\tstages restarted after a kill; kill to restart p50 / max\t%d; %s / %s\t\t\n", r.Takeovers, ms(r.RecoveryP50), ms(r.RecoveryMax))
		fmt.Fprintf(w, "\twall time\t%s\t\t\n", ms(r.Wall))
	}
	w.Flush()
}
