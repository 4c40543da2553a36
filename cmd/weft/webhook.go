package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/webhook"
)

func webhookCommand(g *globals) *cobra.Command {
	var (
		fleet          fleetFlags
		listen, gitDir string
		publicURL      string
		recoverOnce    bool
		recoverEvery   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "webhook",
		Short: "Turn GitHub webhook deliveries into runs",
		Long: `webhook serves GitHub's webhook deliveries on --listen (path /webhook) and
turns each push and pull request of a repository weft knows (weft repo
add) into a run of the pipeline file at that commit.

A delivery is answered as soon as it is stored in the fleet's deliveries
stream: 202 accepted (200 for the same delivery posted again, which
starts no second run). Then a resolver reads the pipeline file from the
commit (a shallow git fetch into --git-cache) and publishes the trigger.
It refuses, publishing nothing: a missing or bad X-Hub-Signature-256
(401), a body over 25 MiB (413), a body that is not JSON (400), a
repository without settings (404). An event or action weft does not build
is answered 202 "ignored"; a ping is answered 200.

Pushes to branches and tags start runs (a deleted ref does not); pull
requests opened, pushed to (synchronize) or reopened do, forks included.

Recovery: GitHub does not retry a failed delivery. For every repository
with a hook id (weft repo set --hook-id) and a token, a pass lists the
hook's deliveries of the last 3 days and asks GitHub to redeliver each
whose every attempt failed (weft was down, or answered 5xx); the bridge
stores a delivery once, so each runs once. A pass runs at start and every
--recover-every; --recover runs one pass, prints what it did, and exits.

Commit statuses: the context weft/PIPELINE of the run's commit is set
pending when its first stage starts and success, failure or error when it
ends, through the repository's API base (GitHub Enterprise too) with its
token. Statuses wait in the statuses stream, the latest per context, so a
restart loses none and updates that pile up are sent once; 5xx answers
are retried with backoff and jitter, rate limits (403/429) wait for
retry-after or x-ratelimit-reset. A slow or failing API delays no run.

` + exitCodesHelp,
		Example: "  weft webhook --server nats://ci:4222 --listen 0.0.0.0:8080",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			b, rs, err := openRepos(ctx, g, &fleet, "weft webhook")
			if err != nil {
				return err
			}
			defer b.Close()
			if recoverOnce {
				recs, err := webhook.NewRecoverer(rs, g.logger()).Pass(ctx)
				if err != nil {
					return withCode(exitInfra, err)
				}
				failed := false
				for _, rec := range recs {
					fmt.Fprintln(g.stdout, rec.String())
					failed = failed || rec.Error != ""
				}
				if len(recs) == 0 {
					fmt.Fprintln(g.stderr, "weft: no repository has a hook id (weft repo set --hook-id): nothing to recover")
				}
				if failed {
					return withCode(exitInfra, errors.New("recovery failed for some repositories"))
				}
				return nil
			}
			if gitDir == "" {
				gitDir = filepath.Join(os.TempDir(), "weft-webhook-git")
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return withCode(exitUsage, fmt.Errorf("--listen %s: %w", listen, err))
			}
			mux := http.NewServeMux()
			mux.Handle("/webhook", webhook.NewHandler(b.JS, rs, g.logger()))
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second}
			resolver := webhook.NewResolver(b.JS, rs, gitDir, g.logger())
			reporter, err := webhook.NewReporter(ctx, b.JS, rs, publicURL, g.logger())
			if err != nil {
				return withCode(exitInfra, err)
			}
			var wg sync.WaitGroup
			rctx, stopResolver := context.WithCancel(ctx)
			errc := make(chan error, 3)
			if recoverEvery > 0 {
				recoverer := webhook.NewRecoverer(rs, g.logger())
				wg.Go(func() { recoverer.Run(rctx, recoverEvery) })
			}
			wg.Go(func() {
				if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
					errc <- err
				}
			})
			wg.Go(func() {
				if err := resolver.Run(rctx); err != nil {
					errc <- err
				}
			})
			wg.Go(func() {
				if err := reporter.Run(rctx); err != nil {
					errc <- err
				}
			})
			fmt.Fprintf(g.stderr, "weft: webhook listening on http://%s/webhook\n", ln.Addr())
			var runErr error
			select {
			case <-ctx.Done():
			case runErr = <-errc:
			}
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			stopResolver()
			wg.Wait()
			if runErr != nil {
				return withCode(exitInfra, runErr)
			}
			return nil
		},
	}
	fleet.add(cmd)
	cmd.Flags().StringVar(&listen, "listen", envOr("WEFT_WEBHOOK_LISTEN", "127.0.0.1:8080"), "address to serve deliveries on; port 0 picks a free one (env WEFT_WEBHOOK_LISTEN)")
	cmd.Flags().BoolVar(&recoverOnce, "recover", false, "run one recovery pass (see Recovery), print it, and exit")
	cmd.Flags().DurationVar(&recoverEvery, "recover-every", 15*time.Minute, "how often a recovery pass runs while serving; 0 never")
	cmd.Flags().StringVar(&publicURL, "public-url", os.Getenv("WEFT_PUBLIC_URL"), "base URL of weft's web UI: a commit status links to URL/runs/RUN (env WEFT_PUBLIC_URL)")
	cmd.Flags().StringVar(&gitDir, "git-cache", "", "directory of the bare git caches the pipeline files are read from (default a temporary one)")
	return cmd
}
