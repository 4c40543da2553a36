package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// fleetFlags are the flags of commands that talk to a fleet's NATS.
type fleetFlags struct {
	server, creds string
	// jsDomain is the JetStream domain of weft's streams (--js-domain).
	jsDomain string
	// flag names the URL flag in messages; default --server.
	flag string
	// unbuffered makes publishes fail while disconnected (agents).
	unbuffered bool
}

func (f *fleetFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.server, "server", os.Getenv("WEFT_SERVER"), "NATS URL of the weft fleet (env WEFT_SERVER); required")
	cmd.Flags().StringVar(&f.creds, "creds", os.Getenv("WEFT_CREDS"), "NATS credentials file (env WEFT_CREDS)")
	jsDomainFlag(cmd.Flags(), &f.jsDomain)
}

// jsDomainFlag adds --js-domain, the JetStream domain weft's streams are
// in, for clients of an edge leaf node.
func jsDomainFlag(f *pflag.FlagSet, domain *string) {
	f.StringVar(domain, "js-domain", os.Getenv("WEFT_JS_DOMAIN"), "JetStream domain of the fleet's streams: the hub's, when --server is an edge leaf node with a domain of its own (env WEFT_JS_DOMAIN)")
}

// open connects to the fleet; exit 2 without a server, 3 when unreachable.
func (f *fleetFlags) open(ctx context.Context, g *globals, name string) (*bus.Bus, error) {
	if f.server == "" {
		flag := f.flag
		if flag == "" {
			flag = "--server"
		}
		return nil, withCode(exitUsage, fmt.Errorf("%s (or WEFT_SERVER) is required", flag))
	}
	b, err := bus.Open(ctx, bus.Config{URL: f.server, CredsFile: f.creds, JSDomain: f.jsDomain, Name: name, Unbuffered: f.unbuffered, Logger: g.logger()})
	if errors.Is(err, bus.ErrInvalidConfig) {
		return nil, withCode(exitUsage, err)
	}
	if err != nil {
		return nil, withCode(exitInfra, err)
	}
	return b, nil
}

func triggerCommand(g *globals) *cobra.Command {
	var (
		fleet                                 fleetFlags
		repo, branch, commit, priority, queue string
		delivery                              string
		wait, asJSON                          bool
	)
	cmd := &cobra.Command{
		Use:   "trigger FILE",
		Short: "Ask a weft fleet for a run of a pipeline",
		Long: `trigger validates a pipeline file and publishes a trigger for it to the
fleet at --server, and prints the run's id. The same trigger (the same
--delivery-id, or without one the same repository, file, branch, commit and
file content) within the dedup window starts one run: the first run's id is
printed again. A refused trigger is remembered for a few seconds only, and a
file changed to fix it is a new trigger.

A pipeline over a limit (see weft validate) is refused with exit 2, naming
the limit, before anything is published.

The run may wait before it starts: for the repository's WIP limit, its
concurrency group, or a queue over its backpressure bound (weft status says
why). A dispatcher configured to refuse instead makes trigger exit 3 with a
retry-after. --wait follows the run like weft run and exits with its status.

` + exitCodesHelp,
		Example: `  weft trigger --server nats://ci:4222 --repo acme/api --branch main --commit $(git rev-parse HEAD) .weft.yml
  weft trigger --server nats://ci:4222 --repo acme/api --priority critical --wait hotfix.yml`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			p, err := loadPipeline(args[0])
			if err != nil {
				return err
			}
			text, err := os.ReadFile(args[0])
			if err != nil {
				return withCode(exitUsage, err)
			}
			var tier subjects.Tier
			if priority != "" {
				if tier, err = subjects.ParseTier(priority); err != nil {
					return withCode(exitUsage, fmt.Errorf("--priority: %w", err))
				}
			}
			if queue != "" {
				if err := subjects.ValidateQueue(queue); err != nil {
					return withCode(exitUsage, fmt.Errorf("--queue: %w", err))
				}
			}
			b, err := fleet.open(ctx, g, "weft trigger")
			if err != nil {
				return err
			}
			defer b.Close()
			t := wire.Trigger{
				ID: delivery, Repo: repo, File: filepath.Base(args[0]), Pipeline: string(text),
				Branch: branch, Commit: commit, Priority: tier, Queue: queue, Time: time.Now(),
			}
			sess := &session{g: g, js: b.JS, out: newPrinter(g.stdout, asJSON, p), grace: 10 * time.Second}
			runID, err := sess.submit(ctx, ctx, t)
			if err != nil {
				return err
			}
			if !wait {
				if asJSON {
					return json.NewEncoder(g.stdout).Encode(map[string]string{"run_id": runID})
				}
				fmt.Fprintln(g.stdout, runID)
				return nil
			}
			followCtx, stopFollow := context.WithCancel(context.WithoutCancel(ctx))
			defer stopFollow()
			return sess.follow(ctx, followCtx, stopFollow, runID)
		},
	}
	fleet.add(cmd)
	f := cmd.Flags()
	f.StringVar(&repo, "repo", "", "repository the pipeline belongs to (WIP limits and concurrency groups are per repository)")
	f.StringVar(&branch, "branch", "", "branch being built (WEFT_BRANCH)")
	f.StringVar(&commit, "commit", "", "commit being built (WEFT_COMMIT)")
	f.StringVar(&priority, "priority", "", "tier for this run: critical, high, normal or low (default: the pipeline's)")
	f.StringVar(&queue, "queue", "", "agent queue for the stages on the pipeline's queue (default: the pipeline's)")
	f.StringVar(&delivery, "delivery-id", "", "delivery id for dedup (default: a hash of repository, file, branch, commit and the file's content)")
	f.BoolVar(&wait, "wait", false, "follow the run like weft run and exit with its status")
	f.BoolVar(&asJSON, "json", false, `print {"run_id": ...}, or with --wait one JSON event per line`)
	return cmd
}
