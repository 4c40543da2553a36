package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"
	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/api"
	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/embedded"
	"github.com/weft-ci/weft/gitsrc"
	"github.com/weft-ci/weft/metrics"
	"github.com/weft-ci/weft/objectstore"
	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/tokens"
	"github.com/weft-ci/weft/ui"
	"github.com/weft-ci/weft/webhook"
)

// adminTokenFile is where weft up keeps the first admin token, in its
// state directory.
const adminTokenFile = "admin.token"

func upCommand(g *globals) *cobra.Command {
	var (
		state, listen, natsListen, publicURL string
		agents                               int
		queues                               []string
		acfg                                 agent.Config
		containerd                           string
		dcfg                                 dispatcher.Config
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a whole weft for a team on this machine: server, dispatcher, agents, API, UI, metrics",
		Long: `up starts an embedded NATS server with JetStream (state in --state, kept
across restarts; clients on --nats-listen), a dispatcher, --agents local
agents, and one HTTP server on --listen serving:

  /            the web UI (runs, a run's stages and live log, queues, agents)
  /api/...     the HTTP API (its OpenAPI document at /api/openapi.json)
  /metrics     Prometheus metrics
  /webhook     GitHub deliveries (weft repo add registers a repository)
  /artifacts/  signed artifact downloads

On its first start it makes an admin token, prints it and keeps it in
STATE/admin.token (mode 0600); weft token create makes more. Register a
pipeline with weft repo add --server nats://NATS-LISTEN, then start runs
with POST /api/pipelines/OWNER%2FNAME/runs.

Every part also runs alone for a fleet: weft server, weft dispatcher,
weft agent, weft api, weft webhook.

` + exitCodesHelp,
		Example: `  weft up --state ./weft-state --listen 127.0.0.1:8080 --agents 2 --slots 2
  curl -H "Authorization: Bearer $(cat weft-state/admin.token)" http://127.0.0.1:8080/api/queues`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if agents < 0 || acfg.Slots < 1 {
				return withCode(exitUsage, fmt.Errorf("--agents must be 0 or more and --slots at least 1"))
			}
			return up(cmd.Context(), g, upConfig{state: state, listen: listen, natsListen: natsListen, publicURL: publicURL,
				agents: agents, queues: queues, agent: acfg, containerd: containerd, dispatcher: dcfg})
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", envOr("WEFT_STATE", "weft-state"), "directory of the state: JetStream, git caches, the admin token (env WEFT_STATE)")
	f.StringVar(&listen, "listen", envOr("WEFT_HTTP_LISTEN", "127.0.0.1:8080"), "address of the HTTP server; port 0 picks a free one (env WEFT_HTTP_LISTEN)")
	f.StringVar(&natsListen, "nats-listen", envOr("WEFT_LISTEN", "127.0.0.1:4222"), "address of the NATS server, for the CLI and more agents; port 0 picks a free one (env WEFT_LISTEN)")
	f.StringVar(&publicURL, "public-url", os.Getenv("WEFT_PUBLIC_URL"), "base URL the UI is reached at from outside, for run links and commit statuses (default http://LISTEN; env WEFT_PUBLIC_URL)")
	f.IntVar(&agents, "agents", 1, "local agents to start")
	f.IntVar(&acfg.Slots, "slots", 2, "stages each local agent runs at once")
	f.StringSliceVar(&queues, "queue", []string{"default", "main", "pr", "release"}, "queues the local agents serve (repeatable)")
	f.StringVar(&acfg.Executor, "executor", envOr("WEFT_EXECUTOR", agent.ExecutorAuto), "auto, process or containerd (env WEFT_EXECUTOR)")
	f.StringVar(&acfg.StageNetwork, "stage-network", envOr("WEFT_STAGE_NETWORK", agent.NetworkIsolated), "isolated (root, ip and iptables) or host, as weft agent's")
	f.StringVar(&containerd, "containerd-address", envOr("WEFT_CONTAINERD_ADDRESS", defaultContainerd), "containerd socket (env WEFT_CONTAINERD_ADDRESS)")
	f.IntVar(&dcfg.WIPLimit, "wip", 3, "runs of one repository in flight at once")
	f.StringVar(&dcfg.WIPPolicy, "wip-policy", dispatcher.PolicyQueue, "above the WIP limit: queue (wait in order) or refuse (429 with Retry-After)")
	f.IntVar(&dcfg.MaxPending, "max-pending", 0, "bound on the pending jobs of a queue; 0 is none")
	f.StringVar(&dcfg.BackpressurePolicy, "backpressure-policy", dispatcher.PolicyQueue, "above --max-pending: queue or refuse")
	f.DurationVar(&dcfg.RetryAfter, "retry-after", 30*time.Second, "retry-after given with a refusal")
	return cmd
}

type upConfig struct {
	state, listen, natsListen, publicURL string
	agents                               int
	queues                               []string
	agent                                agent.Config
	containerd                           string
	dispatcher                           dispatcher.Config
}

func up(ctx context.Context, g *globals, c upConfig) error {
	log := g.logger()
	if err := os.MkdirAll(c.state, 0o750); err != nil {
		return withCode(exitInfra, err)
	}
	reg := prometheus.NewRegistry()
	c.dispatcher.Metrics = metrics.NewDispatcher(reg)
	scfg := embedded.Config{
		Bus:         bus.Config{StoreDir: filepath.Join(c.state, "jetstream"), Listen: c.natsListen, Name: "weft up"},
		Dispatchers: 1, Dispatcher: c.dispatcher, Logger: log,
	}
	for i := range c.agents {
		a := c.agent
		a.ID = fmt.Sprintf("up-%d-%d", os.Getpid(), i+1)
		a.Queues = c.queues
		a.WorkDir = filepath.Join(c.state, "work", fmt.Sprint(i+1))
		a.Env = os.Environ()
		a.Containerd = container.Config{Address: c.containerd}
		scfg.Agents = append(scfg.Agents, a)
	}
	st, err := embedded.Start(context.WithoutCancel(ctx), scfg)
	if errors.Is(err, agent.ErrInvalidConfig) || errors.Is(err, dispatcher.ErrInvalidConfig) {
		return withCode(exitUsage, err)
	}
	if err != nil {
		return withCode(exitInfra, err)
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error().Err(err).Msg("weft up")
		}
	}()
	reg.MustRegister(client.FleetCollector(st.Bus.JS))
	token, fresh, err := adminToken(ctx, st.Bus.JS, filepath.Join(c.state, adminTokenFile))
	if err != nil {
		return withCode(exitInfra, err)
	}
	svc, err := startHTTP(ctx, g, st.Bus.JS, httpConfig{
		listen: c.listen, publicURL: c.publicURL, gitDir: filepath.Join(c.state, "git"),
		metrics: reg, webhook: true, log: log,
	})
	if err != nil {
		return err
	}
	defer svc.stop()
	fmt.Fprintf(g.stdout, "weft up: %s\n", svc.url)
	fmt.Fprintf(g.stdout, "  nats:    %s (state in %s)\n", st.Bus.ClientURL(), c.state)
	fmt.Fprintf(g.stdout, "  ui:      %s/\n", svc.url)
	fmt.Fprintf(g.stdout, "  api:     %s/api (OpenAPI at %s/api/openapi.json)\n", svc.url, svc.url)
	fmt.Fprintf(g.stdout, "  metrics: %s/metrics\n", svc.url)
	fmt.Fprintf(g.stdout, "  webhook: %s/webhook\n", svc.url)
	fmt.Fprintf(g.stdout, "  agents:  %d, %d slots each, queues %s\n", c.agents, c.agent.Slots, strings.Join(c.queues, ","))
	if fresh {
		fmt.Fprintf(g.stdout, "  admin token: %s (kept in %s)\n", token, filepath.Join(c.state, adminTokenFile))
	} else {
		fmt.Fprintf(g.stdout, "  admin token: in %s\n", filepath.Join(c.state, adminTokenFile))
	}
	select {
	case <-ctx.Done():
		return nil
	case <-st.Failed().Done():
		return withCode(exitInfra, st.Err())
	case <-svc.failed:
		return withCode(exitInfra, svc.err())
	}
}

// adminToken makes the first admin token when the fleet has no token and
// keeps it in file; it returns the token and whether it was made now.
func adminToken(ctx context.Context, js jetstream.JetStream, file string) (string, bool, error) {
	ts, err := tokens.Open(ctx, js)
	if err != nil {
		return "", false, err
	}
	all, err := ts.List(ctx)
	if err != nil {
		return "", false, err
	}
	if len(all) > 0 {
		return "", false, nil
	}
	secret, _, err := ts.Create(ctx, "admin", tokens.Admin)
	if err != nil {
		return "", false, err
	}
	if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
		return "", false, fmt.Errorf("keep the admin token: %w", err)
	}
	return secret, true, nil
}

// httpConfig configures the HTTP server of weft up and weft api.
type httpConfig struct {
	listen, publicURL, gitDir string
	// metrics, when set, is served at /metrics.
	metrics *prometheus.Registry
	// webhook mounts the webhook handler and runs its resolver and
	// status reporter.
	webhook bool
	log     zerolog.Logger
}

// httpService is a running HTTP server and the workers behind it.
type httpService struct {
	url    string
	stop   func()
	failed chan struct{} // closed when a worker failed
	mu     sync.Mutex    // guards first
	first  error
}

func (s *httpService) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.first
}

// startHTTP serves the API, artifact downloads and, as configured,
// /metrics and the webhook on one address.
func startHTTP(ctx context.Context, g *globals, js jetstream.JetStream, c httpConfig) (*httpService, error) {
	ts, err := tokens.Open(ctx, js)
	if err != nil {
		return nil, withCode(exitInfra, err)
	}
	rs, err := repos.Open(ctx, js)
	if err != nil {
		return nil, withCode(exitInfra, err)
	}
	store, err := objectstore.Open(ctx, js, objectstore.Limits{})
	if err != nil {
		return nil, withCode(exitInfra, err)
	}
	keys, err := objectstore.OpenKeys(ctx, js)
	if err != nil {
		return nil, withCode(exitInfra, err)
	}
	keep, err := bus.Retention(ctx, js, 0)
	if err != nil {
		return nil, withCode(exitInfra, err)
	}
	// The API's links need the address: listen first.
	ln, err := listenHTTP(c.listen, "--listen")
	if err != nil {
		return nil, err
	}
	base := c.publicURL
	if base == "" {
		base = "http://" + ln.Addr().String()
	}
	a, err := api.New(api.Config{JS: js, Tokens: ts, Repos: rs, Git: gitsrc.New(c.gitDir), BaseURL: base, Logger: c.log})
	if err != nil {
		_ = ln.Close()
		return nil, withCode(exitInfra, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", ui.Handler())
	mux.Handle("/api/", a.Handler())
	mux.Handle(objectstore.URLPrefix, objectstore.Handler(store, keys, keep, time.Now))
	if c.metrics != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(c.metrics, promhttp.HandlerOpts{Registry: c.metrics}))
	}
	if c.webhook {
		mux.Handle("/webhook", webhook.NewHandler(js, rs, c.log))
	}
	stopHTTP := serveHTTP(ctx, g, ln, "http", mux)
	svc := &httpService{url: "http://" + ln.Addr().String(), failed: make(chan struct{})}
	wctx, stopWorkers := context.WithCancel(ctx)
	var wg sync.WaitGroup
	fail := func(err error) {
		svc.mu.Lock()
		defer svc.mu.Unlock()
		if svc.first == nil {
			svc.first = err
			close(svc.failed)
		}
	}
	if c.webhook {
		resolver := webhook.NewResolver(js, rs, c.gitDir, c.log)
		reporter, err := webhook.NewReporter(ctx, js, rs, base, c.log)
		if err != nil {
			stopWorkers()
			stopHTTP()
			return nil, withCode(exitInfra, err)
		}
		wg.Go(func() {
			if err := resolver.Run(wctx); err != nil && wctx.Err() == nil {
				fail(fmt.Errorf("webhook resolver: %w", err))
			}
		})
		wg.Go(func() {
			if err := reporter.Run(wctx); err != nil && wctx.Err() == nil {
				fail(fmt.Errorf("status reporter: %w", err))
			}
		})
	}
	svc.stop = func() {
		stopHTTP()
		stopWorkers()
		wg.Wait()
	}
	return svc, nil
}
