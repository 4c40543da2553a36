package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/wire"
)

func cancelCommand(g *globals) *cobra.Command {
	var (
		fleet          fleetFlags
		reason         string
		noWait, asJSON bool
		wait           time.Duration
	)
	cmd := &cobra.Command{
		Use:   "cancel RUN [STAGE]",
		Short: "Cancel a run or one of its stages: stop what runs, drop what is queued",
		Long: `cancel asks the fleet to cancel the run RUN: the agents holding its running
stages stop them (SIGTERM, then SIGKILL after their --kill-grace), its
queued and pending stages end at once, and the run is recorded cancelled.
A run waiting for admission leaves the queue. It waits, for at most
--wait, until the run has ended and prints how each stage ended. A run
that had already ended is left as it was.

With STAGE it cancels that stage alone: stopped if it runs, cancelled at
once if it is pending or queued. Its dependents are skipped, the other
stages go on, and the run ends cancelled unless a stage failed. It waits
until the stage has ended. A stage that had ended is left as it was.

` + exitCodesHelp + `
  (2 when there is no run RUN, or it has no stage STAGE)`,
		Example: "  weft cancel --server nats://ci:4222 01HZY3J7Q8N5V4C2M1B0A9T8S7\n  weft cancel --server nats://ci:4222 --reason 'superseded by a hotfix' 01HZY3J7Q8N5V4C2M1B0A9T8S7\n  weft cancel --server nats://ci:4222 01HZY3J7Q8N5V4C2M1B0A9T8S7 e2e-tests",
		Args:    usageArgs(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := fleet.open(cmd.Context(), g, "weft cancel")
			if err != nil {
				return err
			}
			defer b.Close()
			id := args[0]
			r, err := client.Get(cmd.Context(), b.JS, id)
			if errors.Is(err, runstore.ErrNoRun) {
				return withCode(exitUsage, fmt.Errorf("no run %s", id))
			}
			if err != nil {
				return withCode(exitInfra, err)
			}
			if len(args) == 2 {
				return cancelStage(cmd.Context(), g, b.JS, fleet.creds, r, args[1], reason, noWait, asJSON, wait)
			}
			if !r.State.Terminal() {
				if err := client.Cancel(cmd.Context(), b.JS, id, reason); err != nil {
					return withCode(exitInfra, err)
				}
				recordCLI(cmd.Context(), g, b.JS, fleet.creds, wire.AuditEntry{Action: "run.cancel", Target: id, Count: 1, Detail: reason})
				if noWait {
					fmt.Fprintf(g.stderr, "weft: cancel of run %s requested\n", id)
					return nil
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), wait)
				defer cancel()
				start := time.Now()
				if r, err = client.Follow(ctx, b.JS, id, func(client.Update) {}); err != nil {
					return withCode(exitInfra, fmt.Errorf("wait for run %s to end: %w", id, err))
				}
				fmt.Fprintf(g.stderr, "weft: run %s %s %s after the cancel\n", id, r.State, time.Since(start).Round(time.Millisecond))
			} else {
				fmt.Fprintf(g.stderr, "weft: run %s had ended %s; nothing to cancel\n", id, r.State)
			}
			if asJSON {
				return json.NewEncoder(g.stdout).Encode(r)
			}
			for _, st := range r.Stages {
				fmt.Fprintf(g.stdout, "%s\t%s\n", st.Key, st.State)
			}
			return nil
		},
	}
	fleet.add(cmd)
	f := cmd.Flags()
	f.StringVar(&reason, "reason", "cancelled with weft cancel", "why, recorded with the run")
	f.BoolVar(&noWait, "no-wait", false, "return once the cancel is recorded, without waiting for the run to end")
	f.DurationVar(&wait, "wait", 2*time.Minute, "most time to wait for the run to end")
	f.BoolVar(&asJSON, "json", false, "print the run as one JSON document once it ended")
	return cmd
}

// cancelStage is weft cancel RUN STAGE: it cancels one stage of r and
// waits for it to end.
func cancelStage(ctx context.Context, g *globals, js jetstream.JetStream, creds string, r *wire.Run, key, reason string, noWait, asJSON bool, wait time.Duration) error {
	id, st := r.ID, r.Stage(key)
	if st == nil {
		return withCode(exitUsage, fmt.Errorf("run %s has no stage %s", id, key))
	}
	if !st.State.Terminal() && !r.State.Terminal() {
		if err := client.CancelStage(ctx, js, id, key, reason); err != nil {
			return withCode(exitInfra, err)
		}
		recordCLI(ctx, g, js, creds, wire.AuditEntry{Action: "stage.cancel", Target: id + "/" + key, Count: 1, Detail: reason})
		if noWait {
			fmt.Fprintf(g.stderr, "weft: cancel of stage %s of run %s requested\n", key, id)
			return nil
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		defer cancel()
		start := time.Now()
		var err error
		if r, err = client.FollowStage(wctx, js, id, key, func(client.Update) {}); err != nil {
			return withCode(exitInfra, fmt.Errorf("wait for stage %s of run %s to end: %w", key, id, err))
		}
		st = r.Stage(key)
		fmt.Fprintf(g.stderr, "weft: stage %s of run %s %s %s after the cancel\n", key, id, st.State, time.Since(start).Round(time.Millisecond))
	} else {
		fmt.Fprintf(g.stderr, "weft: stage %s of run %s had ended %s; nothing to cancel\n", key, id, st.State)
	}
	if asJSON {
		return json.NewEncoder(g.stdout).Encode(st)
	}
	fmt.Fprintf(g.stdout, "%s\t%s\n", st.Key, st.State)
	return nil
}
