package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

func retryCommand(g *globals) *cobra.Command {
	var (
		fleet          fleetFlags
		noWait, asJSON bool
		wait           time.Duration
	)
	cmd := &cobra.Command{
		Use:   "retry RUN",
		Short: "Run a failed or cancelled run again from the stages that did not succeed",
		Long: `retry runs the ended run RUN again: its failed and cancelled stages, and
the stages they skipped, run again as new attempts; what succeeded is
kept, with its artifacts. The run waits for admission again (its WIP slot
and concurrency group) in its original arrival order. retry waits, for at
most --wait, until the run has ended again and prints how each stage
ended.

` + exitCodesHelp + `
  (1 when the retried run fails again; 2 when there is no run RUN or it
  did not end failed or cancelled)`,
		Example: "  weft retry --server nats://ci:4222 01HZY3J7Q8N5V4C2M1B0A9T8S7",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			b, err := fleet.open(ctx, g, "weft retry")
			if err != nil {
				return err
			}
			defer b.Close()
			r, err := existingRun(ctx, b.JS, args[0])
			if err != nil {
				return err
			}
			if r.State != wire.RunFailed && r.State != wire.RunCancelled {
				return withCode(exitUsage, fmt.Errorf("run %s is %s: only a failed or cancelled run can be retried", r.ID, r.State))
			}
			if err := client.Retry(ctx, b.JS, r.ID); err != nil {
				return withCode(exitInfra, err)
			}
			recordCLI(ctx, g, b.JS, fleet.creds, wire.AuditEntry{Action: "run.retry", Target: r.ID, Count: 1, Detail: "was " + string(r.State)})
			wctx, cancel := context.WithTimeout(ctx, wait)
			defer cancel()
			if _, err := watchRun(wctx, b.JS, r.ID, func(n *wire.Run) bool { return n.Replays > r.Replays }); err != nil {
				return withCode(exitInfra, fmt.Errorf("wait for run %s to be retried: %w", r.ID, err))
			}
			fmt.Fprintf(g.stderr, "weft: run %s retried\n", r.ID)
			if noWait {
				return nil
			}
			if r, err = client.Follow(wctx, b.JS, r.ID, func(client.Update) {}); err != nil {
				return withCode(exitInfra, fmt.Errorf("wait for run %s to end: %w", args[0], err))
			}
			if asJSON {
				if err := json.NewEncoder(g.stdout).Encode(r); err != nil {
					return err
				}
			} else {
				for _, st := range r.Stages {
					fmt.Fprintf(g.stdout, "%s\t%s\n", st.Key, st.State)
				}
			}
			if r.State != wire.RunSucceeded {
				return withCode(exitFailed, fmt.Errorf("run %s %s", r.ID, r.State))
			}
			return nil
		},
	}
	fleet.add(cmd)
	f := cmd.Flags()
	f.BoolVar(&noWait, "no-wait", false, "return once the run is retried, without waiting for it to end")
	f.DurationVar(&wait, "wait", 30*time.Minute, "most time to wait for the run to end")
	f.BoolVar(&asJSON, "json", false, "print the run as one JSON document once it ended")
	return cmd
}

func priorityCommand(g *globals) *cobra.Command {
	var (
		fleet  fleetFlags
		asJSON bool
		wait   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "priority RUN TIER",
		Short: "Move a waiting or running run to another tier (critical, high, normal, low)",
		Long: `priority moves the run RUN, which has not ended, to TIER: its stages
queued and not yet started are queued again at TIER (agents take the
highest tier first), and the stages it queues later go there too. A
stage already running is not disturbed. A run still waiting for
admission keeps its place in its repository's order; it is queued at TIER
once admitted. It waits until the run document records the tier.

` + exitCodesHelp + `
  (2 when there is no run RUN, it has ended, or TIER is not a tier)`,
		Example: "  weft priority --server nats://ci:4222 01HZY3J7Q8N5V4C2M1B0A9T8S7 critical",
		Args:    usageArgs(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			tier, err := subjects.ParseTier(args[1])
			if err != nil {
				return withCode(exitUsage, err)
			}
			b, err := fleet.open(ctx, g, "weft priority")
			if err != nil {
				return err
			}
			defer b.Close()
			r, err := existingRun(ctx, b.JS, args[0])
			if err != nil {
				return err
			}
			if r.State.Terminal() || r.CancelReason != "" {
				return withCode(exitUsage, fmt.Errorf("run %s has ended (%s): only a waiting or running run changes tier", r.ID, r.State))
			}
			if err := client.SetPriority(ctx, b.JS, r.ID, tier); err != nil {
				return withCode(exitInfra, err)
			}
			recordCLI(ctx, g, b.JS, fleet.creds, wire.AuditEntry{Action: "run.priority", Target: r.ID, Count: 1, Detail: fmt.Sprintf("%s to %s", cmp.Or(r.Tier, subjects.Normal), tier)})
			wctx, cancel := context.WithTimeout(ctx, wait)
			defer cancel()
			r, err = watchRun(wctx, b.JS, r.ID, func(n *wire.Run) bool { return n.Tier == tier || n.State.Terminal() })
			if err != nil {
				return withCode(exitInfra, fmt.Errorf("wait for run %s to move to %s: %w", args[0], tier, err))
			}
			if r.Tier != tier {
				return withCode(exitUsage, fmt.Errorf("run %s ended (%s) before it moved to %s", r.ID, r.State, tier))
			}
			if asJSON {
				return json.NewEncoder(g.stdout).Encode(map[string]any{"run": r.ID, "tier": r.Tier, "state": r.State})
			}
			fmt.Fprintf(g.stdout, "run %s\t%s\t%s\n", r.ID, r.Tier, r.State)
			return nil
		},
	}
	fleet.add(cmd)
	f := cmd.Flags()
	f.DurationVar(&wait, "wait", time.Minute, "most time to wait for the dispatcher to move the run")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func bulkCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bulk",
		Short: "Cancel or requeue every run a filter selects, at a bounded rate",
		Long: `bulk acts on every run that a filter selects (--repo, --branch, --queue,
--tier, --state, --older-than; all of them must match), oldest first:

  cancel   cancels runs that have not ended (shed load)
  requeue  runs again, as weft retry does, runs that ended failed or
           cancelled (push them back through, in batches)

It proceeds at no more than --rate runs a second, publishing --batch
requests at a time and awaiting their acknowledgements, so the queues
are never flooded; it reports progress on stderr. --dry-run lists what it
would act on and changes nothing.

` + exitCodesHelp,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return withCode(exitUsage, cmd.Help()) },
	}
	for _, action := range []client.BulkAction{client.BulkCancel, client.BulkRequeue} {
		cmd.AddCommand(bulkActionCommand(g, action))
	}
	return cmd
}

func bulkActionCommand(g *globals, action client.BulkAction) *cobra.Command {
	var (
		fleet          fleetFlags
		filter         client.RunFilter
		tier           string
		states         []string
		opts           client.BulkOptions
		asJSON, dryRun bool
	)
	short := map[client.BulkAction]string{
		client.BulkCancel:  "Cancel every run the filter selects that has not ended",
		client.BulkRequeue: "Run again every failed or cancelled run the filter selects",
	}[action]
	cmd := &cobra.Command{
		Use:     string(action) + " [filter flags]",
		Short:   short,
		Long:    "bulk " + string(action) + ": " + strings.ToLower(short[:1]) + short[1:] + ", at --rate runs a second; see weft bulk --help.\n\n" + exitCodesHelp,
		Example: "  weft bulk " + string(action) + " --server nats://ci:4222 --repo acme/monorepo --queue background --older-than 1h --dry-run\n  weft bulk " + string(action) + " --server nats://ci:4222 --repo acme/monorepo --queue background --older-than 1h --rate 20",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if tier != "" {
				t, err := subjects.ParseTier(tier)
				if err != nil {
					return withCode(exitUsage, err)
				}
				filter.Tier = t
			}
			for _, s := range states {
				filter.States = append(filter.States, wire.RunState(s))
			}
			b, err := fleet.open(ctx, g, "weft bulk "+string(action))
			if err != nil {
				return err
			}
			defer b.Close()
			opts.DryRun = dryRun
			last := time.Now()
			opts.Progress = func(done, total int) {
				if done == total || time.Since(last) >= time.Second {
					last = time.Now()
					fmt.Fprintf(g.stderr, "weft: bulk %s: %d of %d runs\n", action, done, total)
				}
			}
			res, err := client.Bulk(ctx, b.JS, action, filter, opts)
			if errors.Is(err, client.ErrBulk) {
				return withCode(exitUsage, err)
			}
			if res != nil && res.Done > 0 { // what was done is recorded, if cut short too
				recordCLI(ctx, g, b.JS, fleet.creds, client.BulkAudit(res, opts))
			}
			if err != nil {
				return withCode(exitInfra, err)
			}
			if asJSON {
				return json.NewEncoder(g.stdout).Encode(res)
			}
			verb := map[client.BulkAction]string{client.BulkCancel: "cancelled", client.BulkRequeue: "requeued"}[action]
			if dryRun {
				fmt.Fprintf(g.stdout, "dry run: would have %s %d runs\n", verb, len(res.Runs))
			} else {
				fmt.Fprintf(g.stdout, "%s %d runs in %s\n", verb, res.Done, res.Elapsed.Round(time.Millisecond))
			}
			for _, id := range res.Runs {
				fmt.Fprintln(g.stdout, id)
			}
			return nil
		},
	}
	fleet.add(cmd)
	f := cmd.Flags()
	f.StringVar(&filter.Repo, "repo", "", "only runs of this repository")
	f.StringVar(&filter.Branch, "branch", "", "only runs of this branch")
	f.StringVar(&filter.Queue, "queue", "", "only runs with a stage on this queue")
	f.StringVar(&tier, "tier", "", "only runs at this tier (critical, high, normal, low)")
	f.StringSliceVar(&states, "state", nil, map[client.BulkAction]string{
		client.BulkCancel:  "only runs in these states (queued, running; default both)",
		client.BulkRequeue: "only runs in these states (failed, cancelled; default both)",
	}[action])
	f.DurationVar(&filter.OlderThan, "older-than", 0, "only runs created longer ago than this, e.g. 1h")
	f.Float64Var(&opts.Rate, "rate", client.DefaultBulkRate, "most runs acted on a second")
	f.IntVar(&opts.Batch, "batch", client.DefaultBulkBatch, "requests published at once (at most --rate)")
	f.BoolVar(&dryRun, "dry-run", false, "list the runs it would act on and change nothing")
	if action == client.BulkCancel {
		f.StringVar(&opts.Reason, "reason", "cancelled with weft bulk cancel", "why, recorded with each run")
	}
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON document")
	return cmd
}

// existingRun reads run id's document, exiting 2 when there is none.
func existingRun(ctx context.Context, js jetstream.JetStream, id string) (*wire.Run, error) {
	rs, err := runstore.Open(ctx, js)
	if err != nil {
		return nil, withCode(exitInfra, err)
	}
	r, _, err := rs.Header(ctx, id)
	if errors.Is(err, runstore.ErrNoRun) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, withCode(exitUsage, fmt.Errorf("no run %s", id))
	}
	if err != nil {
		return nil, withCode(exitInfra, err)
	}
	return r, nil
}

// watchRun watches run id's document until done holds for it and returns
// that version.
func watchRun(ctx context.Context, js jetstream.JetStream, id string, done func(*wire.Run) bool) (*wire.Run, error) {
	kv, err := bus.KeyValue(ctx, js, subjects.RunsBucket)
	if err != nil {
		return nil, err
	}
	w, err := kv.Watch(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("watch run %s: %w", id, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("watch run %s: closed", id)
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if r, err := runstore.DecodeRun(e.Value()); err == nil && done(r) {
				return r, nil
			}
		}
	}
}
