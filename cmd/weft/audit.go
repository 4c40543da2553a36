package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

func auditCommand(g *globals) *cobra.Command {
	var (
		fleet                fleetFlags
		since, action, actor string
		limit                int
		asJSON               bool
	)
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "List the operators' actions: who did what, with which filter, to how many",
		Long: `audit lists the entries of the audit stream (` + subjects.AuditStream + `), oldest first:
every operator action done with the CLI or the API (pausing and resuming
the intake or a queue, cancelling, requeueing, retrying or moving runs,
draining an agent, replaying a dead letter), after it succeeded. Each
entry says when, who (the name in the CLI's credentials, else
$USER@host; an API token's name), via what (cli or api), the action, its
target, a bulk action's filter, how many things it acted on, and any
detail (a reason, a new tier).

Columns: TIME (RFC 3339, UTC), ACTOR, VIA, ACTION, TARGET, COUNT, FILTER
(k=v k=v, sorted), DETAIL; "-" for none, and a value holding a control
character quoted. --json prints one JSON object (the stored entry) per
line instead.

--action takes one action (runs.cancel) or, ending in a dot, a family of
them (runs.). --since takes a duration back from now (90m, 24h, 7d) or an
RFC 3339 time. --limit keeps the newest entries of those selected.
Entries are kept as long as runs (--retention of weft server and weft
dispatcher), and at least a year.

` + exitCodesHelp,
		Example: "  weft audit --server nats://ci:4222\n" +
			"  weft audit --server nats://ci:4222 --since 24h --action runs. --actor alice\n" +
			"  weft audit --server nats://ci:4222 --since 2026-01-02T00:00:00Z --json",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := client.AuditQuery{Action: action, Actor: actor, Limit: limit}
			if limit < 1 {
				return withCode(exitUsage, fmt.Errorf("--limit %d: want 1 or more", limit))
			}
			if _, err := subjects.AuditFilter(action); err != nil {
				return withCode(exitUsage, fmt.Errorf("--action: %w", err))
			}
			if since != "" {
				t, err := client.ParseSince(since, time.Now())
				if err != nil {
					return withCode(exitUsage, fmt.Errorf("--since: %w", err))
				}
				q.Since = t
			}
			b, err := fleet.open(cmd.Context(), g, "weft audit")
			if err != nil {
				return err
			}
			defer b.Close()
			entries, err := client.AuditLog(cmd.Context(), b.JS, q)
			if errors.Is(err, client.ErrInvalidAudit) {
				return withCode(exitUsage, err)
			}
			if err != nil {
				return withCode(exitInfra, err)
			}
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				for _, e := range entries {
					if err := enc.Encode(e); err != nil {
						return err
					}
				}
				return nil
			}
			return printAudit(g, entries)
		},
	}
	fleet.add(cmd)
	f := cmd.Flags()
	f.StringVar(&since, "since", "", "only entries from this time on: a duration back from now (90m, 24h, 7d) or an RFC 3339 time")
	f.StringVar(&action, "action", "", "only this action (runs.cancel), or those starting so when it ends in a dot (runs.)")
	f.StringVar(&actor, "actor", "", "only this actor's entries (as the ACTOR column shows it)")
	f.IntVar(&limit, "limit", client.DefaultAuditLimit, "the newest this many entries of those selected")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per entry, one a line")
	return cmd
}

// printAudit prints entries as aligned columns, one line each.
func printAudit(g *globals, entries []wire.AuditEntry) error {
	w := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tACTOR\tVIA\tACTION\tTARGET\tCOUNT\tFILTER\tDETAIL")
	for _, e := range entries {
		var filter []string
		for _, k := range slices.Sorted(maps.Keys(e.Filter)) {
			filter = append(filter, k+"="+e.Filter[k])
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", e.Time.UTC().Format(time.RFC3339),
			auditField(e.Actor), auditField(e.Via), auditField(e.Action), auditField(e.Target), e.Count,
			auditField(strings.Join(filter, " ")), auditField(e.Detail))
	}
	return w.Flush()
}

// auditField is s as one column: "-" when empty, and quoted when it
// holds a tab, a newline or another control character, so that what an
// operator typed (a reason) can neither break the columns nor forge a
// line.
func auditField(s string) string {
	if s == "" {
		return "-"
	}
	if strings.ContainsFunc(s, unicode.IsControl) {
		return strconv.Quote(s)
	}
	return s
}

// recordCLI records e, an operator action the CLI did, in the audit
// stream, as done by the user of creds (cliActor) via the CLI. The action
// is done already, so it records even when ctx has ended
// (client.RecordDone), and a failure is a warning on stderr, not the
// command's error.
func recordCLI(ctx context.Context, g *globals, js jetstream.JetStream, creds string, e wire.AuditEntry) {
	e.Actor, e.Via = cliActor(creds), wire.AuditViaCLI
	if err := client.RecordDone(ctx, js, e); err != nil {
		fmt.Fprintf(g.stderr, "weft: warning: %s is done but not recorded in the audit stream: %v\n", e.Action, err)
	}
}
