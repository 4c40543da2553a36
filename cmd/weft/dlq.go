package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/wire"
)

func dlqCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "List and replay stage jobs that exhausted their deliveries",
		Args:  usageArgs(cobra.NoArgs),
		RunE:  func(cmd *cobra.Command, _ []string) error { return withCode(exitUsage, cmd.Help()) },
	}
	var (
		lsFleet fleetFlags
		asJSON  bool
	)
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the dead-lettered stage jobs",
		Long: `ls lists the jobs in WEFT_DLQ: jobs delivered MaxDeliver times without an
agent ever finishing them (agents that crash on them). Their stages failed
with category dead_letter.

` + exitCodesHelp,
		Example: "  weft dlq ls --server nats://ci:4222",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := lsFleet.open(cmd.Context(), g, "weft dlq ls")
			if err != nil {
				return err
			}
			defer b.Close()
			dls, err := client.DeadLetters(cmd.Context(), b.JS)
			if err != nil {
				return withCode(exitInfra, err)
			}
			if asJSON {
				return json.NewEncoder(g.stdout).Encode(dls)
			}
			w := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tRUN\tSTAGE\tJOB\tSUBJECT\tDELIVERIES\tDEAD SINCE")
			for _, d := range dls {
				fmt.Fprintf(w, "%d\t%s\t%s\t%d\t%s\t%d\t%s\n", d.Seq, d.RunID, d.Stage, d.Job, d.Subject, d.Deliveries, d.Time.Format(time.RFC3339))
			}
			return w.Flush()
		},
	}
	lsFleet.add(ls)
	ls.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")
	var rFleet fleetFlags
	replay := &cobra.Command{
		Use:   "replay ID",
		Short: "Run a dead-lettered stage again",
		Long: `replay runs the stage of a dead-lettered job again, as a new attempt, and
removes the job from the DLQ; its run becomes live again and the stages it
skipped wait for it. ID is from weft dlq ls.

` + exitCodesHelp,
		Example: "  weft dlq replay --server nats://ci:4222 7",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			seq, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return withCode(exitUsage, fmt.Errorf("ID %q: want the number weft dlq ls shows", args[0]))
			}
			b, err := rFleet.open(cmd.Context(), g, "weft dlq replay")
			if err != nil {
				return err
			}
			defer b.Close()
			dl, err := client.Replay(cmd.Context(), b.JS, seq)
			if errors.Is(err, client.ErrNoDeadLetter) {
				return withCode(exitUsage, err)
			}
			if err != nil {
				return withCode(exitInfra, err)
			}
			recordCLI(cmd.Context(), g, b.JS, rFleet.creds, wire.AuditEntry{Action: "dlq.replay", Target: dl.RunID, Count: 1,
				Detail: fmt.Sprintf("stage %s, dead letter %d", dl.Stage, dl.Seq)})
			fmt.Fprintf(g.stdout, "replaying stage %s of run %s\n", dl.Stage, dl.RunID)
			return nil
		},
	}
	rFleet.add(replay)
	cmd.AddCommand(ls, replay)
	return cmd
}
