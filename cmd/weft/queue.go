package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/wire"
)

func queueCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "queue",
		Short: "Pause and resume agent queues",
		Args:  usageArgs(cobra.NoArgs),
		RunE:  func(cmd *cobra.Command, _ []string) error { return withCode(exitUsage, cmd.Help()) },
	}
	var (
		fleet  fleetFlags
		reason string
	)
	pause := &cobra.Command{
		Use:   "pause QUEUE",
		Short: "Stop agents from taking new jobs from a queue",
		Long: `pause makes every agent stop taking jobs from QUEUE; stages already
running finish. Queued stages wait, and weft status says the queue is paused.

` + exitCodesHelp,
		Example: "  weft queue pause --server nats://ci:4222 --reason 'registry maintenance' deploy",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := fleet.open(cmd.Context(), g, "weft queue pause")
			if err != nil {
				return err
			}
			defer b.Close()
			if err := client.PauseQueue(cmd.Context(), b.JS, args[0], reason); err != nil {
				return withCode(exitUsage, err)
			}
			recordCLI(cmd.Context(), g, b.JS, fleet.creds, wire.AuditEntry{Action: "queue.pause", Target: args[0], Count: 1, Detail: reason})
			fmt.Fprintf(g.stdout, "queue %s paused\n", args[0])
			return nil
		},
	}
	fleet.add(pause)
	pause.Flags().StringVar(&reason, "reason", "", "why, shown by weft status")
	var rfleet fleetFlags
	resume := &cobra.Command{
		Use:     "resume QUEUE",
		Short:   "Let agents take jobs from a paused queue again",
		Long:    "resume lets agents take jobs from QUEUE again.\n\n" + exitCodesHelp,
		Example: "  weft queue resume --server nats://ci:4222 deploy",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := rfleet.open(cmd.Context(), g, "weft queue resume")
			if err != nil {
				return err
			}
			defer b.Close()
			if err := client.ResumeQueue(cmd.Context(), b.JS, args[0]); err != nil {
				return withCode(exitUsage, err)
			}
			recordCLI(cmd.Context(), g, b.JS, rfleet.creds, wire.AuditEntry{Action: "queue.resume", Target: args[0], Count: 1})
			fmt.Fprintf(g.stdout, "queue %s resumed\n", args[0])
			return nil
		},
	}
	rfleet.add(resume)
	cmd.AddCommand(pause, resume)
	return cmd
}
