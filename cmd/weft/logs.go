package main

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/internal/bytesize"
	"github.com/weft-ci/weft/runstore"
)

func logsCommand(g *globals) *cobra.Command {
	var (
		fleet          fleetFlags
		follow, asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "logs RUN [STAGE]",
		Short: "Print the output of a run's stages",
		Long: `logs prints the output a run's stages wrote (one stage's with STAGE), as
"stage | line". With -f it goes on with the output still to come and
returns once all of it arrived after the run ended, or with STAGE after
that stage ended (its final result: a stage that fails and is retried goes
on with the retry), while the rest of the run may still be running.

--json prints one line per output line: {"stage","attempt","seq","stream",
"text","time"}; seq numbers the attempt's log batches from 1, so a gap
says a batch was lost, and time is when the agent read the line. A line
over ` + bytesize.Format(agent.MaxLineBytes) + ` comes as consecutive pieces of that size. An attempt's output
over the agent's log cap (weft agent --log-cap, default ` + bytesize.Format(agent.DefaultLogCap) + `) keeps its
first part and its last ` + bytesize.Format(agent.DefaultLogTail) + `, with a line saying what was dropped
between them; past the first part, lines arrive when the stage ends.

` + exitCodesHelp,
		Example: "  weft logs --server nats://ci:4222 01JABCDEF...\n  weft logs --server nats://ci:4222 -f 01JABCDEF... test",
		Args:    usageArgs(cobra.RangeArgs(1, 2)),
		RunE: func(cmd *cobra.Command, args []string) error {
			stage := ""
			if len(args) == 2 {
				stage = args[1]
			}
			b, err := fleet.open(cmd.Context(), g, "weft logs")
			if err != nil {
				return err
			}
			defer b.Close()
			enc := json.NewEncoder(g.stdout)
			var werr error
			err = client.Logs(cmd.Context(), b.JS, args[0], stage, follow, func(l client.Line) {
				if werr != nil {
					return
				}
				if asJSON {
					werr = enc.Encode(l)
					return
				}
				_, werr = fmt.Fprintf(g.stdout, "%s | %s\n", l.Stage, l.Text)
			})
			if errors.Is(err, runstore.ErrNoRun) {
				return withCode(exitUsage, fmt.Errorf("run %s: no such run", args[0]))
			}
			if errors.Is(err, client.ErrNoStage) {
				return withCode(exitUsage, fmt.Errorf("run %s has no stage %q", args[0], stage))
			}
			if err != nil {
				return withCode(exitInfra, err)
			}
			if werr != nil {
				return withCode(exitInfra, werr)
			}
			return nil
		},
	}
	fleet.add(cmd)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "go on with the output to come, until the run (or STAGE) ends")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per line")
	return cmd
}
