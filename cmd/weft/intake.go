package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/wire"
)

func intakeCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "intake",
		Short: "Pause and resume the intake of triggers (the killswitch)",
		Long: `intake pauses and resumes the dispatchers' intake of triggers: the
killswitch for a queue that backs up. Paused, triggers (webhook
deliveries, weft trigger, weft run --server) wait in the triggers stream,
durably; runs already admitted go on. Resumed, the waiting triggers are
admitted in the order they came. The pause holds across dispatcher
restarts.

` + exitCodesHelp,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return withCode(exitUsage, cmd.Help()) },
	}
	for _, verb := range []string{"pause", "resume", "status"} {
		var (
			fleet  fleetFlags
			asJSON bool
		)
		sub := &cobra.Command{
			Use:   verb,
			Short: map[string]string{"pause": "Stop admitting triggers; they wait, in order", "resume": "Admit triggers again, those that waited first", "status": "Say whether the intake is paused and how many triggers wait"}[verb],
			Long:  "intake " + verb + ": see weft intake --help.\n\n" + exitCodesHelp,
			Args:  usageArgs(cobra.NoArgs),
			RunE: func(cmd *cobra.Command, _ []string) error {
				b, err := fleet.open(cmd.Context(), g, "weft intake "+verb)
				if err != nil {
					return err
				}
				defer b.Close()
				// The audit entry counts the triggers the action holds
				// (those waiting once paused) or releases (those waiting
				// as it resumes).
				var released uint64
				switch verb {
				case "pause":
					err = client.PauseIntake(cmd.Context(), b.JS)
				case "resume":
					_, released, _ = client.Intake(cmd.Context(), b.JS) // ResumeIntake says why, if this fails
					err = client.ResumeIntake(cmd.Context(), b.JS)
				}
				if err != nil {
					return withCode(exitInfra, err)
				}
				paused, waiting, err := client.Intake(cmd.Context(), b.JS)
				switch verb {
				case "pause":
					recordCLI(cmd.Context(), g, b.JS, fleet.creds, wire.AuditEntry{Action: "intake.pause", Count: int(waiting)})
				case "resume":
					recordCLI(cmd.Context(), g, b.JS, fleet.creds, wire.AuditEntry{Action: "intake.resume", Count: int(released)})
				}
				if err != nil {
					return withCode(exitInfra, err)
				}
				if asJSON {
					return json.NewEncoder(g.stdout).Encode(map[string]any{"paused": paused, "waiting": waiting})
				}
				state := "open"
				if paused {
					state = "paused"
				}
				fmt.Fprintf(g.stdout, "intake %s, %d triggers waiting\n", state, waiting)
				return nil
			},
		}
		fleet.add(sub)
		sub.Flags().BoolVar(&asJSON, "json", false, "print JSON")
		cmd.AddCommand(sub)
	}
	return cmd
}
