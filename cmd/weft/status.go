package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/client"
)

func statusCommand(g *globals) *cobra.Command {
	var (
		fleet  fleetFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the work in flight and why what waits is waiting",
		Long: `status lists the runs in flight and the runs waiting for admission, with
their stages that are queued or running: queue, tier, how long they waited
and why they wait (the repository's WIP limit, a concurrency group, a queue
over its backpressure bound; for a queued stage, no agent serving its queue
or all of them busy). Then the agents and the admission counters.

` + exitCodesHelp,
		Example: "  weft status --server nats://ci:4222\n  weft status --server nats://ci:4222 --json | jq '.runs[].reason'",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := fleet.open(cmd.Context(), g, "weft status")
			if err != nil {
				return err
			}
			defer b.Close()
			st, err := client.GetStatus(cmd.Context(), b.JS)
			if err != nil {
				return withCode(exitInfra, err)
			}
			if asJSON {
				return json.NewEncoder(g.stdout).Encode(st)
			}
			printStatus(g, st)
			return nil
		},
	}
	fleet.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the status as one JSON document")
	return cmd
}

func printStatus(g *globals, st *client.Status) {
	w := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "RUN / STAGE\tREPO\tPIPELINE\tSTATE\tQUEUE\tTIER\tWAITED\tWHY")
	for _, r := range st.Runs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t\t%s\t%s\t%s\n", r.ID, dash(r.Repo), r.Pipeline, r.State, r.Tier, r.Waited.Round(time.Millisecond), dash(r.Detail))
		for _, s := range r.Stages {
			why := s.Detail
			if s.Agent != "" {
				why = "on agent " + s.Agent
			}
			fmt.Fprintf(w, "  %s\t\t\t%s\t%s\t%s\t%s\t%s\n", s.Key, s.State, s.Queue, s.Tier, s.Waited.Round(time.Millisecond), dash(why))
		}
	}
	w.Flush()
	fmt.Fprintf(g.stdout, "\n%d agents\n", len(st.Agents))
	for _, a := range st.Agents {
		fmt.Fprintf(g.stdout, "  %s  %s  queues %s  busy %d/%d  %s\n", a.ID, a.Hostname, strings.Join(a.Queues, ","), a.Busy, a.Slots, a.Executor)
	}
	for q, why := range st.Paused {
		fmt.Fprintf(g.stdout, "queue %s paused: %s\n", q, dash(why))
	}
	for k, v := range st.Counters {
		fmt.Fprintf(g.stdout, "%s: %d\n", k, v)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
