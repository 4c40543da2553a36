package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/bench"
	"github.com/weft-ci/weft/internal/bytesize"
)

func benchCommand(g *globals) *cobra.Command {
	var (
		o      bench.Options
		co     bench.ChaosOptions
		so     bench.ScaleOptions
		ao     bench.ArtifactsOptions
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "bench [hotfix|isolation|wip|chaos|scale|SCALE-SCENARIO|artifacts]...",
		Short: "Measure priority, queue isolation, WIP limits, chaos, scale and artifacts",
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
  chaos      on separate processes (weft server with a file store, two
             weft dispatcher, --agents weft agent): --runs runs over
             --repos repositories at --rate triggers/s under WIP limit
             --wip (most wait for admission): plain DAGs with a busybox
             container stage when containerd is reachable, queue-mode
             concurrency groups, cancel_in_progress runs superseded
             mid-run, runs cancelled by the client mid-run and while
             waiting. Meanwhile agents and each dispatcher are SIGKILLed
             and restarted at random and the server once. An independent
             checker (every event, the run documents, records the host
             stages write, containerd samples) prints: runs lost and
             stuck, stages finished twice and run twice, most runs in
             flight per repository and per group against their limits,
             leases, workspaces and containers left, kill-to-restart
             p50/max, and the coverage that makes those figures mean
             something (kills, waits, cancels)

  scale      every scale scenario below, each next to its baseline:
  width        one pipeline of --width-small and one of --width-large
               independent true stages on --width-slots slots: stages/s
               of each and their ratio (1 is flat)
  throughput   --throughput-runs runs of --throughput-stages true stages
               through weft server, weft dispatcher and
               --throughput-agents weft agent processes of
               --throughput-slots slots: stages/s against the raw
               fetch+fork+ack loop on as many workers; runs lost
  concurrency  --concurrent stages of sleep --concurrent-time on
               --concurrent-agents agent processes (AckWait
               --concurrent-ack-wait): the most running at once,
               redeliveries, finishes left to the reconcile loop, the
               cores the server and the dispatcher use while all run
               (from /proc, against them idle) and every process's RSS
  flood        --flood-triggers triggers over --flood-repos repositories
               with WIP --flood-wip, whose runs hold their slot: the time
               per trigger with a tenth of them and with all of them
               waiting, and the queue time of a critical run then
  herd         one-stage runs one at a time (--herd-jobs) on one queue
               with each of --herd-slots idle one-slot agents: pull
               requests ($JS.API.CONSUMER.MSG.NEXT.>) per job and
               dispatch p50/p99 at each size
  storage      --storage-runs runs of a 10-stage pipeline with output:
               bytes per run on disk, by stream, and the bound at the
               retention for 100,000 runs a day
  startup      weft run of a one-stage pipeline, --startup-runs times,
               process start to exit, against weft version

  artifacts  against a weft server process: --artifact-rounds rounds, each
             storing an --artifact-size file as an artifact and reading it
             back into a file through weft's artifact store and through
             the raw JetStream Object Store on the same bucket, the order
             alternating: the median rates and weft's ratio to raw; then
             an --artifact-big file each way once, with how much more
             resident memory this process (and the server) held at the
             peak than before

With no scenario it runs hotfix, isolation and wip. Progress goes to stderr.

` + exitCodesHelp + `
  (bench chaos exits 1 when an invariant broke or the chaos did not
  exercise one, so CI can run it)`,
		Example: "  weft bench\n  weft bench hotfix --jobs 1000 --slots 2 --json\n  weft bench chaos --runs 500 --repos 3 --wip 3 --json\n  weft bench scale\n  weft bench width herd --herd-slots 1,20,200\n  weft bench artifacts --artifact-big 1GiB",
		Args: usageArgs(func(_ *cobra.Command, args []string) error {
			for _, a := range args {
				if !slices.Contains([]string{"hotfix", "isolation", "wip", "chaos", "scale", "artifacts"}, a) && !slices.Contains(bench.ScaleScenarios, a) {
					return fmt.Errorf("unknown scenario %q: want hotfix, isolation, wip, chaos, scale, artifacts or one of %s", a, strings.Join(bench.ScaleScenarios, ", "))
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
			var scale []string
			for _, name := range args {
				switch {
				case name == "scale":
					scale = append(scale, bench.ScaleScenarios...)
				case slices.Contains(bench.ScaleScenarios, name):
					scale = append(scale, name)
				}
			}
			if len(scale) > 0 {
				so.Logger, so.Progress = g.logger(), o.Progress
				r, err := bench.Scale(cmd.Context(), so, slices.Compact(scale))
				if err != nil {
					return withCode(exitInfra, err)
				}
				results["scale"] = r
			}
			for _, name := range args {
				if name == "scale" || slices.Contains(bench.ScaleScenarios, name) {
					continue
				}
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
				case "artifacts":
					ao.Progress = o.Progress
					r, err = bench.Artifacts(cmd.Context(), ao)
				}
				if errors.Is(err, bench.ErrInvalidChaos) {
					return withCode(exitUsage, err)
				}
				if err != nil {
					return withCode(exitInfra, fmt.Errorf("bench %s: %w", name, err))
				}
				results[name] = r
			}
			if asJSON {
				if err := json.NewEncoder(g.stdout).Encode(results); err != nil {
					return err
				}
			} else {
				printBench(g, results)
			}
			if r, ok := results["chaos"].(*bench.ChaosResult); ok && !r.OK {
				fmt.Fprintf(g.stderr, "weft bench: chaos: %d problems\n", len(r.Problems))
				return withCode(exitFailed, errSilent)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.Jobs, "jobs", 1000, "stages in the low-tier and background bursts")
	f.IntVar(&o.Slots, "slots", 2, "agent slots on the saturated queue")
	f.DurationVar(&o.StageTime, "stage-time", 10*time.Millisecond, "how long each burst stage sleeps")
	f.IntVar(&o.Probes, "probes", 20, "main stages measured per isolation phase")
	f.IntVar(&co.Runs, "runs", bench.DefaultChaosRuns, "chaos: runs to trigger")
	f.IntVar(&co.Repos, "repos", bench.DefaultChaosRepos, "chaos: repositories the runs are spread over")
	f.IntVar(&co.WIP, "wip", bench.DefaultChaosWIP, "chaos: the dispatchers' WIP limit per repository")
	f.IntVar(&co.Agents, "agents", bench.DefaultChaosAgents, "chaos: agent processes")
	f.IntVar(&co.Slots, "agent-slots", bench.DefaultChaosSlots, "chaos: slots of each agent")
	f.Float64Var(&co.Rate, "rate", bench.DefaultChaosRate, "chaos: triggers published per second")
	f.DurationVar(&co.AckWait, "ack-wait", bench.DefaultChaosAckWait, "chaos: the agents' AckWait")
	f.DurationVar(&co.SweepInterval, "sweep-interval", bench.DefaultChaosSweepInterval, "chaos: the dispatchers' lease sweep interval")
	f.DurationVar(&co.ReconcileInterval, "reconcile-interval", bench.DefaultChaosReconcile, "chaos: the dispatchers' reconcile interval")
	f.DurationVar(&co.KillEvery, "kill-every", bench.DefaultChaosKillEvery, "chaos: mean time between two agent kills")
	f.DurationVar(&co.AgentDown, "agent-down", bench.DefaultChaosAgentDown, "chaos: most time a killed agent stays down")
	f.DurationVar(&co.DispatcherEvery, "dispatcher-every", bench.DefaultChaosDispatcherEvery, "chaos: mean time between two kills of each dispatcher")
	f.DurationVar(&co.DispatcherDown, "dispatcher-down", bench.DefaultChaosDispatcherDown, "chaos: most time a killed dispatcher stays down")
	f.DurationVar(&co.ServerDown, "server-down", bench.DefaultChaosServerDown, "chaos: how long the server stays down, once")
	f.DurationVar(&co.Settle, "settle", bench.DefaultChaosSettle, "chaos: time runs have to end after the chaos stops before they count as stuck")
	f.DurationVar(&co.Grace, "grace", bench.DefaultChaosGrace, "chaos: time leases, workspaces and containers have to go before they count as left")
	f.DurationVar(&co.Stall, "stall", bench.DefaultChaosStall, "chaos: stop the chaos when no run ended for this long")
	f.DurationVar(&co.MaxRecovery, "max-recovery", bench.DefaultChaosMaxRecovery, "chaos: limit on the time from an agent kill to the restart of its stage")
	f.BoolVar(&co.HostOnly, "host-only", false, "chaos: run every stage on the host even when containerd is reachable")
	f.StringVar(&co.ContainerdAddress, "containerd-address", envOr("WEFT_CONTAINERD_ADDRESS", defaultContainerd), "chaos: containerd socket (env WEFT_CONTAINERD_ADDRESS)")
	f.Uint64Var(&co.Seed, "seed", 0, "chaos: seed of the plan and the faults (default random, printed)")
	f.StringVar(&co.Dir, "dir", "", "chaos: keep the state (server store, process logs, stage records) in this directory")
	f.IntVar(&so.Width[0], "width-small", 100, "scale width: stages of the narrow pipeline")
	f.IntVar(&so.Width[1], "width-large", 3000, "scale width: stages of the wide pipeline")
	f.IntVar(&so.WidthSlots, "width-slots", 2, "scale width: agent slots")
	f.IntVar(&so.Runs, "throughput-runs", 10_000, "scale throughput: runs")
	f.IntVar(&so.RunStages, "throughput-stages", 10, "scale throughput: stages per run")
	f.IntVar(&so.Agents, "throughput-agents", 2, "scale throughput: agent processes")
	f.IntVar(&so.Slots, "throughput-slots", 2, "scale throughput: slots per agent")
	f.IntVar(&so.Concurrent, "concurrent", 1000, "scale concurrency: stages running at once")
	f.IntVar(&so.ConcurrentAgents, "concurrent-agents", 4, "scale concurrency: agent processes")
	f.DurationVar(&so.StageTime, "concurrent-time", 70*time.Second, "scale concurrency: how long each stage sleeps")
	f.DurationVar(&so.Window, "concurrent-window", time.Minute, "scale concurrency: how long CPU is measured while all run")
	f.DurationVar(&so.ConcurrentAckWait, "concurrent-ack-wait", 30*time.Second, "scale concurrency: the agents' AckWait")
	f.IntVar(&so.Triggers, "flood-triggers", 10_000, "scale flood: triggers")
	f.IntVar(&so.Repos, "flood-repos", 100, "scale flood: repositories")
	f.IntVar(&so.WIP, "flood-wip", 3, "scale flood: WIP limit per repository")
	f.IntSliceVar(&so.HerdSlots, "herd-slots", []int{1, 20, 200}, "scale herd: idle one-slot agents at each size")
	f.IntVar(&so.HerdJobs, "herd-jobs", 100, "scale herd: jobs sent one at a time at each size")
	f.IntVar(&so.StorageRuns, "storage-runs", 1000, "scale storage: runs of a 10-stage pipeline")
	f.IntVar(&so.StartupRuns, "startup-runs", 20, "scale startup: timed runs of weft run")
	f.Var(sizeValue{&ao.Size}, "artifact-size", "artifacts: the artifact each round moves (default "+bytesize.Format(bench.DefaultArtifactSize)+")")
	f.IntVar(&ao.Rounds, "artifact-rounds", bench.DefaultArtifactRounds, "artifacts: rounds, each through weft and raw")
	f.Var(sizeValue{&ao.Big}, "artifact-big", "artifacts: the artifact moved once each way while memory is watched (default "+bytesize.Format(bench.DefaultArtifactBig)+")")
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
		printChaos(w, r)
	}
	if r, ok := results["scale"].(*bench.ScaleResult); ok {
		printScale(w, r)
	}
	if r, ok := results["artifacts"].(*bench.ArtifactsResult); ok {
		printArtifacts(w, r)
	}
	w.Flush()
	if r, ok := results["chaos"].(*bench.ChaosResult); ok {
		fmt.Fprintf(g.stdout, "chaos: stages: %s\n", r.ContainersNote)
		if r.OK {
			fmt.Fprintln(g.stdout, "chaos: ok, every invariant held and every fault happened")
			return
		}
		fmt.Fprintf(g.stdout, "chaos: %d problems:\n", len(r.Problems))
		for _, p := range r.Problems {
			fmt.Fprintf(g.stdout, "  - %s\n", p)
		}
	}
}

// printChaos writes the chaos figures as rows of the bench table: the
// WEFT column holds the figure, BASELINE its limit.
func printChaos(w io.Writer, r *bench.ChaosResult) {
	dk := make([]string, len(r.DispatcherKills))
	for i, n := range r.DispatcherKills {
		dk[i] = strconv.Itoa(n)
	}
	row := func(measure, value, limit string) { fmt.Fprintf(w, "\t%s\t%s\t%s\t\n", measure, value, limit) }
	fmt.Fprintf(w, "chaos\t%d runs over %d repositories, WIP %d, %d agents x %d slots, seed %d\t%d accepted\t\t\n", r.Runs, r.Repos, r.WIPLimit, r.Agents, r.Slots, r.Seed, r.Accepted)
	row("faults: agent kills; dispatcher kills; server restarts (down)", fmt.Sprintf("%d; %s; %d (%s)", r.AgentKills, strings.Join(dk, " + "), r.ServerRestarts, r.ServerDown.Round(time.Millisecond)), "")
	row("coverage: admitted from the waiting list; waited for their group", fmt.Sprintf("%d; %d", r.AdmittedFromWaiting, r.GroupWaited), "most; > 0")
	row("coverage: client cancels running / waiting; superseded running / waiting", fmt.Sprintf("%d / %d; %d / %d", r.CancelledRunning, r.CancelledWaiting, r.SupersededRunning, r.SupersededWaiting), "> 0")
	row("coverage: host / container stage executions; takeovers; events", fmt.Sprintf("%d / %d; %d; %d", r.HostStages, r.ContainerStages, r.Takeovers, r.Events), "> 0")
	row("runs lost (stuck)", fmt.Sprintf("%d (%d)", r.Lost, r.Stuck), "0")
	row("stages that ran again after a stored success", strconv.Itoa(r.FinishedTwice), "0")
	row("stages that ran again after a late finish (at-least-once)", strconv.Itoa(len(r.RanAgainAfterLateFinish)), "-")
	row("stages run twice (two attempts at once)", strconv.Itoa(r.RunTwice), "0")
	row("most runs of a repository in flight; executing", fmt.Sprintf("%d; %d", r.MaxInFlight, r.MaxExecuting), fmt.Sprintf("limit %d", r.WIPLimit))
	row("most runs of a concurrency group in flight; executing", fmt.Sprintf("%d; %d", r.MaxGroupInFlight, r.MaxGroupExecuting), "limit 1")
	row("leases and group locks left", strconv.Itoa(r.LeasesLeft), "0")
	row("workspaces left on agents; containers left", fmt.Sprintf("%d; %d", r.WorkspacesLeft, r.ContainersLeft), "0")
	row("processes that panicked; exited by themselves", fmt.Sprintf("%d; %d", len(r.Panics), r.UnexpectedExits), "0; -")
	row("kill to restart p50 / max", fmt.Sprintf("%s / %s (%s)", r.RecoveryP50.Round(time.Millisecond), r.RecoveryMax.Round(time.Millisecond), r.RecoveryWorst), "max "+r.RecoveryLimit.String())
	row("slowest run, admitted to end", fmt.Sprintf("%s %s", r.SlowestRunFor.Round(time.Millisecond), r.SlowestRun), "-")
	row("wall time", r.Wall.Round(time.Millisecond).String(), "")
}

// printScale writes the scale figures as rows of the bench table.
func printScale(w io.Writer, r *bench.ScaleResult) {
	if x := r.Width; x != nil {
		fmt.Fprintf(w, "width\tstages/s of %d independent stages on %d slots; of %d\t%.1f\t%.1f\t%.2f\n", x.Large, x.Slots, x.Small, x.LargeRate, x.SmallRate, x.Ratio)
	}
	if x := r.Throughput; x != nil {
		fmt.Fprintf(w, "throughput\tstages/s, %d runs x %d stages, %d agents x %d slots (processes); raw loop\t%.1f\t%.1f (raw)\t%.2f\n", x.Runs, x.StagesPerRun, x.Agents, x.Slots, x.Rate, x.RawRate, x.Ratio)
		fmt.Fprintf(w, "\truns lost; finishes left to the reconcile loop; wall\t%d; %d; %s\t0; 0\t\n", x.Lost, x.ReconcileFinished, x.Wall.Round(time.Millisecond))
	}
	if x := r.Concurrency; x != nil {
		fmt.Fprintf(w, "concurrency\tmost of %d stages running at once (%d agents, AckWait %s)\t%d\t%d\t\n", x.Stages, x.Agents, x.AckWait, x.MostRunning, x.Stages)
		fmt.Fprintf(w, "\tcores while all run: server + dispatcher (over %s)\t%.3f + %.3f\t%.3f + %.3f (idle)\t\n", x.Window.Round(time.Second), x.ServerCores, x.DispatcherCores, x.IdleServerCores, x.IdleDispatcherCores)
		fmt.Fprintf(w, "\tredeliveries; finishes left to the reconcile loop; lost jobs requeued; stages succeeded\t%d; %d; %d; %d\t0; 0; 0; %d\t\n", x.Redeliveries, x.ReconcileFinished, x.ReconcileLost, x.Succeeded, x.Stages)
		names := make([]string, 0, len(x.RSS))
		for n := range x.RSS {
			names = append(names, n)
		}
		slices.Sort(names)
		var parts []string
		for _, n := range names {
			parts = append(parts, fmt.Sprintf("%s %.0f MiB", n, float64(x.RSS[n])/(1<<20)))
		}
		fmt.Fprintf(w, "\tRSS\t%s\t\t\n", strings.Join(parts, ", "))
	}
	if x := r.Flood; x != nil {
		fmt.Fprintf(w, "flood\ttime per trigger, %d waiting; %d waiting (%d repos, WIP %d)\t%s\t%s\t%.2f\n", x.High, x.Low, x.Repos, x.WIP, ms(x.PerTriggerHigh), ms(x.PerTriggerLow), x.Ratio)
		fmt.Fprintf(w, "\tqueue time of a critical run with %d waiting; its trigger\t%s; %s\t100 ms\t\n", x.High, ms(x.Critical), ms(x.CriticalSubmit))
	}
	if x := r.Herd; x != nil {
		for _, s := range x.Sizes {
			fmt.Fprintf(w, "herd\tpull requests per job, dispatch p50/p99, %d idle slots\t%.1f, %s / %s\t\t\n", s.Slots, s.PullsPerJob, ms(s.DispatchP50), ms(s.DispatchP99))
		}
		if len(x.Sizes) > 1 {
			first, last := x.Sizes[0], x.Sizes[len(x.Sizes)-1]
			fmt.Fprintf(w, "\tpull requests per job at %d slots; at %d\t%.1f\t%.1f\t%.2f\n", last.Slots, first.Slots, last.PullsPerJob, first.PullsPerJob, x.Ratio)
		}
	}
	if x := r.Storage; x != nil {
		fmt.Fprintf(w, "storage\tbytes per finished run of %d stages with output\t%.0f\t\t\n", x.Stages, x.BytesPerRun)
		names := make([]string, 0, len(x.ByStream))
		for n := range x.ByStream {
			names = append(names, n)
		}
		slices.Sort(names)
		var parts []string
		for _, n := range names {
			parts = append(parts, fmt.Sprintf("%s %.0f", n, x.ByStream[n]))
		}
		fmt.Fprintf(w, "\tby stream\t%s\t\t\n", strings.Join(parts, ", "))
		fmt.Fprintf(w, "\tkept %s: store size at 100,000 runs a day\t%.1f GiB\t\t\n", x.Retention, x.Bound/(1<<30))
	}
	if x := r.Startup; x != nil {
		fmt.Fprintf(w, "startup\tweft run of one stage, min / p50 / max of %d; weft version p50\t%s / %s / %s\t%s\t\n", x.Runs, ms(x.Min), ms(x.P50), ms(x.Max), ms(x.Baseline))
	}
}

// printArtifacts writes the artifacts figures as rows of the bench table.
func printArtifacts(w io.Writer, r *bench.ArtifactsResult) {
	rate := func(t bench.Transfer) string { return bytesize.Format(int64(t.Rate)) + "/s" }
	fmt.Fprintf(w, "artifacts\tput of %s from a file, median of %d; raw Object Store\t%s\t%s (raw)\t%.2f\n", bytesize.Format(r.Size), r.Rounds, rate(r.Put), rate(r.RawPut), r.PutRatio)
	fmt.Fprintf(w, "\tget of %s into a file, digest checked, median of %d; raw\t%s\t%s (raw)\t%.2f\n", bytesize.Format(r.Size), r.Rounds, rate(r.Get), rate(r.RawGet), r.GetRatio)
	fmt.Fprintf(w, "\tput of %s: rate; RSS growth of the client\t%s; %s\t%s; %s (raw)\t\n", bytesize.Format(r.Big), rate(r.BigPut), bytesize.Format(r.BigPut.Growth), rate(r.BigRawPut), bytesize.Format(r.BigRawPut.Growth))
	fmt.Fprintf(w, "\tget of %s: rate; RSS growth of the client\t%s; %s\t%s; %s (raw)\t\n", bytesize.Format(r.Big), rate(r.BigGet), bytesize.Format(r.BigGet.Growth), rate(r.BigRawGet), bytesize.Format(r.BigRawGet.Growth))
	fmt.Fprintf(w, "\tRSS growth of the server while it stored %s; wall\t%s; %s\t\t\n", bytesize.Format(r.Big), bytesize.Format(r.ServerGrowth), r.Wall.Round(time.Millisecond))
}
