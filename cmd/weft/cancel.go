package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/runstore"
)

func cancelCommand(g *globals) *cobra.Command {
	var (
		fleet          fleetFlags
		reason         string
		noWait, asJSON bool
		wait           time.Duration
	)
	cmd := &cobra.Command{
		Use:   "cancel RUN",
		Short: "Cancel a run: stop its running stages, drop the queued ones",
		Long: `cancel asks the fleet to cancel the run RUN: the agents holding its running
stages stop them (SIGTERM, then SIGKILL after their --kill-grace), its
queued and pending stages end at once, and the run is recorded cancelled.
A run waiting for admission leaves the queue. It waits, for at most
--wait, until the run has ended and prints how each stage ended. A run
that had already ended is left as it was.

` + exitCodesHelp + `
  (2 when there is no run RUN)`,
		Example: "  weft cancel --server nats://ci:4222 01HZY3J7Q8N5V4C2M1B0A9T8S7\n  weft cancel --server nats://ci:4222 --reason 'superseded by a hotfix' 01HZY3J7Q8N5V4C2M1B0A9T8S7",
		Args:    usageArgs(cobra.ExactArgs(1)),
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
			if !r.State.Terminal() {
				if err := client.Cancel(cmd.Context(), b.JS, id, reason); err != nil {
					return withCode(exitInfra, err)
				}
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
