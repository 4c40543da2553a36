package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/auth"
	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/metrics"
	"github.com/weft-ci/weft/stagenet"
	"github.com/weft-ci/weft/wire"
)

func serverCommand(g *globals) *cobra.Command {
	var (
		state, listen, httpAddr string
		syncAlways              bool
		keep                    time.Duration
		name, monitor           string
		domain, leafListen      string
		leaf                    []string
		cluster                 bus.Cluster
		replicas                int
		authMode, authDir       string
		leafCreds               string
		configFile, ownCreds    string
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a NATS node with JetStream for a weft fleet",
		Long: `server runs a standalone NATS server with JetStream in this process, keeps
its state in --state and provisions weft's streams and buckets. Dispatchers
(weft dispatcher --server URL) and agents (weft agent --join URL) connect to
it. It runs until SIGINT or SIGTERM.

Durability: by default JetStream acknowledges a write once it reaches the
operating system and fsyncs every 2 minutes, so a crashed process loses
nothing but a power loss can lose the last minutes on one node.
--sync-always fsyncs every write (slower: measured here 2,070 vs 6,350
jobs/s); a 3-node cluster is the answer for a fleet.

Cluster: --cluster NAME --cluster-listen ADDR --routes URL,... makes this
server a member of a NATS cluster (the same --cluster and --routes on
every member, each with its own --server-name, --state and addresses).
Its streams and buckets are kept in as many copies as there are members,
up to 3 (--replicas): with three, the loss of any one member loses
nothing, and clients given every member's URL (--server a,b,c) carry on.
The server waits for the cluster to elect a JetStream leader (a majority
of members up) before it provisions.

Edge: a hub (--leaf-listen ADDR --domain hub) takes leaf nodes; an edge
site runs weft server --leaf nats://hub:7422 --domain edge, and its agents
join it locally with --js-domain hub: their jobs, events and logs cross
the leaf link to the hub's streams. A leaf provisions nothing.

Config file: -c FILE makes the server from a nats-server configuration
file (the nats-server syntax: listen, cluster, leafnodes, tls,
authorization or operator and resolver, http for monitoring ...), for
what the flags do not cover. JetStream is turned on, in --state unless
the file sets store_dir; the flags that configure the server are refused
with it, and weft's own auth is off (the file's applies). Give --creds
when the file requires this process to authenticate.

` + authHelp + retentionHelp + exitCodesHelp,
		Example: "  weft server --state /var/lib/weft --listen 0.0.0.0:4222\n" +
			"  weft server --server-name n1 --state /var/lib/weft --listen 0.0.0.0:4222 \\\n" +
			"    --cluster weft --cluster-listen 0.0.0.0:6222 --routes nats://n1:6222,nats://n2:6222,nats://n3:6222",
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			cfg := bus.Config{
				StoreDir: filepath.Join(state, "jetstream"), Listen: listen, SyncAlways: syncAlways,
				ServerName: name, Name: "weft server", Logger: g.logger(), Monitor: monitor,
				Domain: domain, LeafListen: leafListen, Leaf: leaf, LeafCreds: leafCreds,
			}
			if configFile != "" {
				for _, name := range []string{"listen", "cluster", "cluster-listen", "routes", "leaf", "leaf-listen", "domain", "http-monitor"} {
					if cmd.Flags().Changed(name) {
						return withCode(exitUsage, fmt.Errorf("--%s: with -c %s the file configures the server", name, configFile))
					}
				}
				if authMode == "on" {
					return withCode(exitUsage, fmt.Errorf("--auth on: with -c %s the file configures authentication", configFile))
				}
				cfg.ConfigFile, cfg.CredsFile, cfg.Listen, cfg.Cluster, authMode = configFile, ownCreds, "", nil, "off"
			}
			on, err := authOn(authMode, cfg.Listen, leafListen)
			if err != nil {
				return withCode(exitUsage, err)
			}
			if on {
				if authDir == "" {
					authDir = filepath.Join(state, "auth")
				}
				if cfg.Auth, err = auth.Init(authDir); err != nil {
					return withCode(exitInfra, err)
				}
			}
			size := 1
			if cluster.Name != "" || cluster.Listen != "" || len(cluster.Routes) > 0 {
				cfg.Cluster = &cluster
				size = cluster.Size()
			}
			if replicas == 0 {
				replicas = min(size, 3)
			}
			if replicas < 1 || replicas > 5 || (replicas > size && configFile == "") {
				return withCode(exitUsage, fmt.Errorf("--replicas %d: want 1 to %d, at most the %d members the routes name", replicas, min(size, 5), size))
			}
			b, err := bus.Open(ctx, cfg)
			if err != nil {
				if errors.Is(err, bus.ErrInvalidConfig) {
					return withCode(exitUsage, err)
				}
				return withCode(exitInfra, err)
			}
			defer b.Close()
			if cfg.Cluster != nil {
				fmt.Fprintf(g.stderr, "weft: member %s of cluster %s (%d members), streams in %d copies\n", cmp.Or(name, "weft-embedded"), cluster.Name, size, replicas)
				if replicas < 3 {
					fmt.Fprintf(g.stderr, "weft: warning: with %d copies the loss of a member stops JetStream or loses what it held; 3 members are needed to survive one\n", replicas)
				}
			}
			if len(leaf) > 0 {
				// weft's streams and buckets are the hub's.
				fmt.Fprintf(g.stderr, "weft: leaf node of %s (JetStream domain %q); clients here reach the hub's streams with --js-domain HUB-DOMAIN\n", strings.Join(leaf, ","), domain)
			} else if err := provisionWhenReady(ctx, g, b, keep, replicas); err != nil {
				return withCode(exitInfra, err)
			}
			if u := b.MonitorURL(); u != "" {
				fmt.Fprintf(g.stderr, "weft: nats monitoring on %s (/varz, /jsz, /healthz)\n", u)
			}
			if cfg.Auth != nil {
				fmt.Fprintf(g.stderr, "weft: auth on: clients need credentials from weft creds --auth-dir %s ROLE; account %s\n", authDir, cfg.Auth.Account())
			} else if beyond, _ := authOn("auto", listen, leafListen); beyond {
				fmt.Fprintln(g.stderr, "weft: warning: auth off (--auth off) on a port beyond loopback: anyone who reaches it may publish jobs")
			}
			fmt.Fprintf(g.stderr, "weft: nats server listening on %s (state in %s)\n", b.ClientURL(), state)
			if httpAddr != "" {
				stop, err := serveArtifacts(ctx, g, b, httpAddr, keep)
				if err != nil {
					return err
				}
				defer stop()
			}
			<-ctx.Done()
			fmt.Fprintln(g.stderr, "weft: server stopping")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", envOr("WEFT_STATE", "weft-state"), "directory of the JetStream state (env WEFT_STATE)")
	f.StringVar(&listen, "listen", envOr("WEFT_LISTEN", "127.0.0.1:4222"), "client address; port 0 picks a free one (env WEFT_LISTEN)")
	f.BoolVar(&syncAlways, "sync-always", false, "fsync every write (see Durability)")
	f.StringVar(&name, "server-name", os.Getenv("WEFT_SERVER_NAME"), "this server's name, its own in a cluster (env WEFT_SERVER_NAME; default weft-embedded)")
	f.StringVar(&monitor, "http-monitor", os.Getenv("WEFT_HTTP_MONITOR"), "serve NATS's monitoring endpoints (/varz, /jsz, /healthz; what KEDA's nats-jetstream scaler reads) on this address, e.g. 0.0.0.0:8222; port 0 picks a free one (env WEFT_HTTP_MONITOR)")
	f.StringVar(&domain, "domain", os.Getenv("WEFT_DOMAIN"), "this server's JetStream domain (see Edge); a leaf that runs JetStream needs one other than its hub's (env WEFT_DOMAIN)")
	f.StringVar(&leafListen, "leaf-listen", "", "take leaf node connections from edge servers on this address, e.g. 0.0.0.0:7422 (a hub)")
	f.StringSliceVar(&leaf, "leaf", nil, "run as a leaf node of the hub at these URLs, nats://hub:7422,... (see Edge)")
	f.StringVar(&cluster.Name, "cluster", "", "join the NATS cluster of this name (see Cluster)")
	f.StringVar(&cluster.Listen, "cluster-listen", "", "address the other members' routes connect to, e.g. 0.0.0.0:6222")
	f.StringSliceVar(&cluster.Routes, "routes", nil, "the members' cluster URLs, nats://host:port,... (this one's may be among them)")
	f.StringVarP(&configFile, "config", "c", "", "make the server from this nats-server configuration file instead (TLS, accounts of your own, anything else); weft still provisions its streams in it (see Config file)")
	f.StringVar(&ownCreds, "creds", "", "with -c: credentials this process connects to its own server with, when the file requires them")
	f.StringVar(&authMode, "auth", envOr("WEFT_AUTH", "auto"), "auto (on when listening beyond loopback), on or off (see Auth; env WEFT_AUTH)")
	f.StringVar(&authDir, "auth-dir", os.Getenv("WEFT_AUTH_DIR"), "directory of the auth keys (default STATE/auth; env WEFT_AUTH_DIR)")
	f.StringVar(&leafCreds, "leaf-creds", os.Getenv("WEFT_LEAF_CREDS"), "credentials this leaf node presents to a hub with auth on, e.g. weft creds operator (env WEFT_LEAF_CREDS)")
	f.IntVar(&replicas, "replicas", 0, "copies of every stream and bucket (default: the members the routes name, up to 3)")
	f.StringVar(&httpAddr, "http", os.Getenv("WEFT_HTTP_LISTEN"), "serve signed artifact downloads (weft artifacts url) on this address, e.g. 127.0.0.1:8080; port 0 picks a free one (env WEFT_HTTP_LISTEN)")
	f.DurationVar(&keep, "retention", 0, "how long runs, events, logs, dead letters and artifacts are kept (see Retention); 0 keeps what the streams have, 720h (30 days) for new ones")
	return cmd
}

func dispatcherCommand(g *globals) *cobra.Command {
	var (
		fleet       fleetFlags
		cfg         dispatcher.Config
		limit       map[string]int
		keep        time.Duration
		metricsAddr string
	)
	cmd := &cobra.Command{
		Use:   "dispatcher",
		Short: "Admit triggers and drive runs for a weft fleet",
		Long: `dispatcher connects to the fleet's NATS, provisions weft's streams and
buckets, and admits triggers and drives runs until SIGINT or SIGTERM. It
keeps no state of its own: several may run at once, and one may be killed
and restarted at any time.

` + retentionHelp + exitCodesHelp,
		Example: "  weft dispatcher --server nats://ci:4222 --wip 3 --wip-repo acme/monorepo=8",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			b, err := fleet.open(ctx, g, "weft dispatcher")
			if err != nil {
				return err
			}
			defer b.Close()
			if err := bus.Provision(ctx, b.JS, keep); err != nil {
				return withCode(exitInfra, err)
			}
			cfg.WIPLimits = limit
			cfg.Logger = g.logger()
			if metricsAddr != "" {
				reg := prometheus.NewRegistry()
				reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
					client.FleetCollector(b.JS))
				cfg.Metrics = metrics.NewDispatcher(reg)
				stop, err := serveMetrics(ctx, g, reg, metricsAddr)
				if err != nil {
					return err
				}
				defer stop()
			}
			d, err := dispatcher.New(ctx, b, cfg)
			if err != nil {
				return withCode(exitUsage, err)
			}
			if err := d.Run(ctx); err != nil {
				return withCode(exitInfra, err)
			}
			return nil
		},
	}
	fleet.add(cmd)
	f := cmd.Flags()
	f.IntVar(&cfg.WIPLimit, "wip", 3, "runs of one repository in flight at once")
	f.StringVar(&metricsAddr, "metrics", os.Getenv("WEFT_METRICS_LISTEN"), "serve Prometheus metrics on http://ADDR/metrics (queue time by queue and tier, triggers by outcome, stage and run durations, failures, dead letters, and the fleet gauges: jobs waiting and running, agents, WIP in use, runs waiting, the same from every dispatcher); port 0 picks a free one (env WEFT_METRICS_LISTEN)")
	f.DurationVar(&keep, "retention", 0, "how long runs, events, logs, dead letters and artifacts are kept (see Retention); 0 keeps what the streams have, 720h (30 days) for new ones")
	f.StringToIntVar(&limit, "wip-repo", nil, "WIP limit of one repository, REPO=N (repeatable)")
	f.StringVar(&cfg.WIPPolicy, "wip-policy", dispatcher.PolicyQueue, "above the WIP limit: queue (wait in order) or refuse (with a retry-after)")
	f.IntVar(&cfg.MaxPending, "max-pending", 0, "bound on the pending jobs of a queue; 0 is none")
	f.StringVar(&cfg.BackpressurePolicy, "backpressure-policy", dispatcher.PolicyQueue, "above --max-pending: queue or refuse")
	f.DurationVar(&cfg.RetryAfter, "retry-after", 30*time.Second, "retry-after given with a refusal")
	f.DurationVar(&cfg.SweepInterval, "sweep-interval", dispatcher.DefaultSweepInterval, "how often leases and locks of ended runs are freed (those a killed dispatcher left)")
	f.DurationVar(&cfg.ReconcileInterval, "reconcile-interval", dispatcher.DefaultReconcileInterval, "how often admitted runs are checked for lost jobs and missed events")
	f.DurationVar(&cfg.DedupWindow, "dedup-window", 60*time.Second, "how long a trigger id is remembered")
	return cmd
}

func agentCommand(g *globals) *cobra.Command {
	var (
		join, creds, workDir, containerd string
		jsDomain                         string
		cfg                              agent.Config
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Join a weft fleet and run stages",
		Long: `agent joins the fleet at --join and runs stages from its queues, the
highest tier first, --slots at a time.

SIGTERM, or weft agent drain ID, drains it: it takes no more jobs,
finishes the stages it runs (for at most --drain-timeout, after which
they are stopped and their jobs handed back to the fleet), leaves the
registry and exits 0. SIGINT stops it at once: its running stages are
stopped and their jobs handed back.

` + exitCodesHelp,
		Example: "  weft agent --join nats://ci:4222 --queue main --queue pr --slots 4",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if creds != "" {
				if err := agentFromCreds(cmd, creds, &cfg, &jsDomain); err != nil {
					return withCode(exitUsage, err)
				}
			}
			fleet := fleetFlags{server: join, creds: creds, jsDomain: jsDomain, flag: "--join", unbuffered: true}
			b, err := fleet.open(ctx, g, "weft agent")
			if err != nil {
				return err
			}
			defer b.Close()
			if cfg.ID == "" {
				cfg.ID = ulid.Make().String()
			}
			if workDir == "" {
				workDir = filepath.Join(os.TempDir(), "weft-agent-"+cfg.ID)
				defer os.RemoveAll(workDir)
			}
			cfg.WorkDir, cfg.Env, cfg.Logger = workDir, os.Environ(), g.logger()
			cfg.Containerd = container.Config{Address: containerd}
			a, err := agent.New(b, cfg)
			if err != nil {
				return withCode(exitUsage, err)
			}
			fmt.Fprintf(g.stderr, "weft: agent %s joined %s\n", a.ID(), join)
			defer context.AfterFunc(g.terminated, func() {
				fmt.Fprintf(g.stderr, "weft: agent %s draining (SIGTERM)\n", a.ID())
				a.Drain()
			})()
			// SIGTERM drains; only SIGINT stops the stages.
			if err := a.Run(g.interrupted); err != nil {
				return withCode(exitInfra, err)
			}
			fmt.Fprintf(g.stderr, "weft: agent %s stopped\n", a.ID())
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&join, "join", os.Getenv("WEFT_SERVER"), "NATS URL of the fleet (env WEFT_SERVER); required")
	f.StringVar(&creds, "creds", os.Getenv("WEFT_CREDS"), "NATS credentials file (env WEFT_CREDS; weft creds agent makes one, which also gives the queues and labels)")
	jsDomainFlag(f, &jsDomain)
	f.StringVar(&cfg.ID, "id", "", "agent id (default: a new ULID)")
	f.StringSliceVar(&cfg.Queues, "queue", []string{"default"}, "queue to serve (repeatable; default an agent's credentials' queues, else default)")
	f.IntVar(&cfg.Slots, "slots", 1, "stages run at once")
	f.StringVar(&workDir, "work-dir", "", "directory of the run workspaces (default: a temporary one)")
	f.BoolVar(&cfg.KeepWorkspaces, "keep-workspaces", false, "keep a run's workspace when it ends, for the next run of its pipeline (one path per repository, pipeline and lane under --work-dir)")
	f.StringVar(&cfg.Executor, "executor", envOr("WEFT_EXECUTOR", agent.ExecutorAuto), "auto, process or containerd (env WEFT_EXECUTOR)")
	f.StringVar(&cfg.StageNetwork, "stage-network", envOr("WEFT_STAGE_NETWORK", agent.NetworkIsolated), "isolated: every stage, host or container, gets a network of its own that reaches out but not this machine's ports (root, ip and iptables); host: stages share the agent's network (env WEFT_STAGE_NETWORK)")
	f.StringVar(&cfg.StageSubnet, "stage-subnet", envOr("WEFT_STAGE_SUBNET", stagenet.DefaultSubnet), "IPv4 range of isolated stage networks, a /30 per stage, the same for every agent of a machine (env WEFT_STAGE_SUBNET)")
	f.StringVar(&containerd, "containerd-address", envOr("WEFT_CONTAINERD_ADDRESS", defaultContainerd), "containerd socket (env WEFT_CONTAINERD_ADDRESS)")
	f.DurationVar(&cfg.KillGrace, "kill-grace", 10*time.Second, "time a stopped stage gets between SIGTERM and SIGKILL")
	f.DurationVar(&cfg.AckWait, "ack-wait", 30*time.Second, "AckWait of job consumers this agent creates; it heartbeats every third")
	f.IntVar(&cfg.MaxDeliver, "max-deliver", 5, "deliveries of a job before it is dead-lettered, for job consumers this agent creates")
	storageFlags(f, &cfg.ArtifactLimits, &cfg.CacheLimits)
	f.Var(sizeValue{&cfg.LogCap}, "log-cap", logCapHelp())
	envAllowFlag(f, &cfg.EnvAllow)
	f.StringToStringVar(&cfg.Labels, "label", nil, "a label of this agent, K=V (repeatable, at most 4): it also runs the stages of its queues whose agents: ask for some of its labels")
	f.DurationVar(&cfg.ExitWhenIdle, "exit-when-idle", 0, "drain and exit 0 once no job ran for this long (for autoscaled agents); 0 never")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", 0, "most time a drain waits for the running stages before handing them back; 0 waits for them")
	cmd.AddCommand(agentDrainCommand(g))
	return cmd
}

func agentDrainCommand(g *globals) *cobra.Command {
	var fleet fleetFlags
	cmd := &cobra.Command{
		Use:   "drain ID",
		Short: "Drain an agent: it takes no more jobs, finishes its stages and exits",
		Long: `drain asks the agent ID (as weft agents lists it) to drain, as SIGTERM does:
it takes no more jobs, finishes the stages it runs (or hands them back
after its --drain-timeout), leaves the registry and exits 0. It prints the
stages the agent still runs.

` + exitCodesHelp + `
  (3 when no agent ID answered)`,
		Example: "  weft agent drain --server nats://ci:4222 01HZY3J7Q8N5V4C2M1B0A9T8S7",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := fleet.open(cmd.Context(), g, "weft agent drain")
			if err != nil {
				return err
			}
			defer b.Close()
			r, err := client.DrainAgent(cmd.Context(), b.Conn, args[0])
			if err != nil {
				return withCode(exitInfra, err)
			}
			recordCLI(cmd.Context(), g, b.JS, fleet.creds, wire.AuditEntry{Action: "agent.drain", Target: args[0], Count: 1, Detail: fmt.Sprintf("%d stages running", len(r.Running))})
			fmt.Fprintf(g.stdout, "agent %s draining; running %d stages %s\n", r.Agent, len(r.Running), strings.Join(r.Running, " "))
			return nil
		},
	}
	fleet.add(cmd)
	return cmd
}

// provisionWhenReady provisions weft's streams and buckets in replicas
// copies, retrying while a cluster has no JetStream leader yet (the
// first members wait for a majority to start), for at most a minute.
func provisionWhenReady(ctx context.Context, g *globals, b *bus.Bus, keep time.Duration, replicas int) error {
	deadline := time.Now().Add(time.Minute)
	for said := time.Now(); ; {
		err := bus.ProvisionReplicated(ctx, b.JS, keep, replicas)
		if err == nil || replicas == 1 || ctx.Err() != nil {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the cluster elected no JetStream leader within a minute (is a majority of its members up?): %w", err)
		}
		if time.Since(said) > 5*time.Second {
			fmt.Fprintf(g.stderr, "weft: waiting for the cluster: %v\n", err)
			said = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// envAllowFlag adds --env-allow, the variables of this process's
// environment host stages get beyond agent.DefaultEnvAllow.
func envAllowFlag(f *pflag.FlagSet, allow *[]string) {
	f.StringSliceVar(allow, "env-allow", nil, "a variable of this environment host stages get, NAME or PREFIX* (repeatable); by default they get only "+strings.Join(agent.DefaultEnvAllow(), ", ")+", never WEFT_*")
}
