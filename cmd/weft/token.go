package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/tokens"
)

func tokenCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Make, list and revoke the HTTP API's tokens",
		Long: `token manages the bearer tokens of the HTTP API (weft up, weft api). A
token has a role: viewer (reads), operator (also triggers, cancels,
steers queues) or admin (also manages tokens). Only a hash of each is
stored; the secret is printed once, when it is made.

` + exitCodesHelp,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return withCode(exitUsage, cmd.Help()) },
	}
	var (
		fleet fleetFlags
		role  string
	)
	create := &cobra.Command{
		Use:     "create NAME",
		Short:   "Make a token and print its secret",
		Example: "  weft token create --server nats://127.0.0.1:4222 --role operator deploy-bot",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := tokens.ParseRole(role)
			if err != nil {
				return withCode(exitUsage, err)
			}
			b, ts, err := openTokens(cmd.Context(), g, &fleet, "weft token")
			if err != nil {
				return err
			}
			defer b.Close()
			secret, t, err := ts.Create(cmd.Context(), args[0], r)
			if errors.Is(err, tokens.ErrInvalid) {
				return withCode(exitUsage, err)
			}
			if err != nil {
				return withCode(exitInfra, err)
			}
			fmt.Fprintln(g.stdout, secret)
			fmt.Fprintf(g.stderr, "weft: token %s (%s, %s) made; the secret is not shown again\n", t.ID, t.Name, t.Role)
			return nil
		},
	}
	fleet.add(create)
	create.Flags().StringVar(&role, "role", string(tokens.Viewer), "viewer, operator or admin")

	var (
		lsFleet fleetFlags
		asJSON  bool
	)
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the tokens (never their secrets)",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, ts, err := openTokens(cmd.Context(), g, &lsFleet, "weft token ls")
			if err != nil {
				return err
			}
			defer b.Close()
			all, err := ts.List(cmd.Context())
			if err != nil {
				return withCode(exitInfra, err)
			}
			if asJSON {
				if all == nil {
					all = []*tokens.Token{}
				}
				return json.NewEncoder(g.stdout).Encode(all)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tROLE\tCREATED")
			for _, t := range all {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, t.Created.Format(time.RFC3339))
			}
			return tw.Flush()
		},
	}
	lsFleet.add(ls)
	ls.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var rmFleet fleetFlags
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token: every API server refuses it at once",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, ts, err := openTokens(cmd.Context(), g, &rmFleet, "weft token revoke")
			if err != nil {
				return err
			}
			defer b.Close()
			if err := ts.Revoke(cmd.Context(), args[0]); errors.Is(err, tokens.ErrNotFound) {
				return withCode(exitUsage, err)
			} else if err != nil {
				return withCode(exitInfra, err)
			}
			fmt.Fprintf(g.stderr, "weft: token %s revoked\n", args[0])
			return nil
		},
	}
	rmFleet.add(revoke)
	cmd.AddCommand(create, ls, revoke)
	return cmd
}

// openTokens connects to the fleet and opens its API tokens; close the
// bus.
func openTokens(ctx context.Context, g *globals, fleet *fleetFlags, name string) (*bus.Bus, *tokens.Store, error) {
	b, err := fleet.open(ctx, g, name)
	if err != nil {
		return nil, nil, err
	}
	ts, err := tokens.Open(ctx, b.JS)
	if err != nil {
		b.Close()
		return nil, nil, withCode(exitInfra, err)
	}
	return b, ts, nil
}

func apiCommand(g *globals) *cobra.Command {
	var (
		fleet                     fleetFlags
		listen, publicURL, gitDir string
		withWebhook               bool
	)
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Serve the HTTP API and artifact downloads for a fleet",
		Long: `api serves the HTTP API (/api/..., its OpenAPI document at
/api/openapi.json) and signed artifact downloads (/artifacts/) on
--listen, for the fleet at --server; --webhook also takes GitHub
deliveries, as weft webhook does. weft up serves the same on one machine.

` + exitCodesHelp,
		Example: "  weft api --server nats://ci:4222 --creds operator.creds --listen 0.0.0.0:8080 --public-url https://ci.example.com",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			b, err := fleet.open(ctx, g, "weft api")
			if err != nil {
				return err
			}
			defer b.Close()
			svc, err := startHTTP(ctx, g, b.JS, httpConfig{listen: listen, publicURL: publicURL, gitDir: gitDir, webhook: withWebhook, log: g.logger()})
			if err != nil {
				return err
			}
			defer svc.stop()
			fmt.Fprintf(g.stdout, "weft api: %s/api\n", svc.url)
			select {
			case <-ctx.Done():
				return nil
			case <-svc.failed:
				return withCode(exitInfra, svc.err())
			}
		},
	}
	fleet.add(cmd)
	f := cmd.Flags()
	f.StringVar(&listen, "listen", envOr("WEFT_HTTP_LISTEN", "127.0.0.1:8080"), "address to serve on; port 0 picks a free one (env WEFT_HTTP_LISTEN)")
	f.StringVar(&publicURL, "public-url", os.Getenv("WEFT_PUBLIC_URL"), "base URL the API is reached at from outside, for run links (default http://LISTEN; env WEFT_PUBLIC_URL)")
	f.StringVar(&gitDir, "git-cache", filepath.Join(os.TempDir(), "weft-api-git"), "directory of the bare git caches pipeline files are read from")
	f.BoolVar(&withWebhook, "webhook", false, "also serve /webhook, with its resolver and status reporter")
	return cmd
}
