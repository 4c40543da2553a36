package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/wire"
)

func agentsCommand(g *globals) *cobra.Command {
	var (
		fleet  fleetFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "List the agents of the fleet",
		Long: `agents lists the agents in the fleet's registry (KV weft_agents): id, host,
weft version, queues, labels, slots in use, idle, busy or draining, the stages each runs
now (RUN/STAGE) and when it last renewed its entry. An agent renews it
every few seconds; one that stops renewing (killed, cut off) drops out
after the registry's TTL.

` + exitCodesHelp,
		Example: "  weft agents --server nats://ci:4222\n  weft agents --server nats://ci:4222 --json | jq '.[] | select(.busy > 0) | .id'",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := fleet.open(cmd.Context(), g, "weft agents")
			if err != nil {
				return err
			}
			defer b.Close()
			agents, err := client.Agents(cmd.Context(), b.JS)
			if err != nil {
				return withCode(exitInfra, err)
			}
			if asJSON {
				if agents == nil {
					agents = []wire.Agent{}
				}
				return json.NewEncoder(g.stdout).Encode(agents)
			}
			w := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tHOST\tVERSION\tQUEUES\tLABELS\tSLOTS\tSTATE\tSTAGES\tSEEN")
			for _, a := range agents {
				state := "idle"
				switch {
				case a.Draining:
					state = "draining"
				case a.Busy > 0:
					state = "busy"
				}
				var labels []string
				for _, k := range slices.Sorted(maps.Keys(a.Labels)) {
					labels = append(labels, k+"="+a.Labels[k])
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\t%s ago\n", a.ID, dash(a.Hostname), dash(a.Version), strings.Join(a.Queues, ","),
					dash(strings.Join(labels, ",")), a.Busy, a.Slots, state, dash(strings.Join(a.Stages, " ")), time.Since(a.Seen).Round(time.Second))
			}
			return w.Flush()
		},
	}
	fleet.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the agents as one JSON array")
	return cmd
}
