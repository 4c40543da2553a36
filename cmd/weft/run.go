package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/embedded"
	"github.com/weft-ci/weft/internal/bytesize"
	"github.com/weft-ci/weft/objectstore"
	"github.com/weft-ci/weft/pipeline"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

type runOptions struct {
	branch, commit, priority string
	server, creds            string
	state, listen            string
	slots                    int
	json                     bool
	killGrace                time.Duration
	executor, containerd     string
	artifacts                objectstore.Limits
	cache                    objectstore.CacheLimits
	logCap                   int64
	envAllow                 []string
}

func runCommand(g *globals) *cobra.Command {
	var o runOptions
	cmd := &cobra.Command{
		Use:   "run FILE",
		Short: "Run a pipeline and follow it to the end",
		Long: `run validates a pipeline file, triggers a run of it and follows it: every
output line prefixed with its stage key, a status line per stage
transition, and a summary. It exits with the run's status.

With no --server it starts everything in this process: an embedded NATS
server with JetStream (state in a temporary directory that is removed at
exit, or in --state DIR, which is kept and served on --listen so the nats
CLI can look), a dispatcher and a local agent that runs the stages as host
processes in a per-run workspace. With --server it only triggers and
follows: dispatchers and agents of that fleet run the stages.

Stages with an image run in containerd containers (--executor auto, the
default) with the run's workspace at /workspace; when containerd cannot be
reached such stages fail with category infra, and the others still run on
the host. --executor containerd makes containerd required (exit 3 without
it); --executor process runs host processes only.

Ctrl-C cancels the run: its stages are stopped (SIGTERM, then SIGKILL after
--kill-grace), the run is recorded as cancelled and weft run exits 1.

` + exitCodesHelp,
		Example: `  weft run examples/diamond.yml
  weft run --slots 2 --json examples/diamond.yml
  weft run --state .weft --branch main examples/diamond.yml
  weft run --server nats://ci.example.com:4222 pipeline.yml`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPipeline(cmd.Context(), g, args[0], o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.branch, "branch", "", "branch being built, WEFT_BRANCH (default: the git branch of FILE's directory)")
	f.StringVar(&o.commit, "commit", "", "commit being built, WEFT_COMMIT (default: the git HEAD of FILE's directory)")
	f.StringVar(&o.priority, "priority", "", "tier for this run: critical, high, normal or low (default: the pipeline's)")
	f.StringVar(&o.server, "server", os.Getenv("WEFT_SERVER"), "NATS URL of a weft fleet (env WEFT_SERVER); empty runs everything in-process")
	f.StringVar(&o.creds, "creds", os.Getenv("WEFT_CREDS"), "NATS credentials file for --server (env WEFT_CREDS)")
	f.StringVar(&o.state, "state", "", "keep the embedded server's state in DIR (default: a temporary directory removed at exit)")
	f.StringVar(&o.listen, "listen", "", "address the embedded server listens on (default with --state: 127.0.0.1:0, a free port; none without)")
	f.IntVar(&o.slots, "slots", 1, "stages the local agent runs at once")
	storageFlags(f, &o.artifacts, &o.cache)
	f.BoolVar(&o.json, "json", false, "print one JSON event per line instead of text")
	f.DurationVar(&o.killGrace, "kill-grace", 10*time.Second, "time a stopped stage gets between SIGTERM and SIGKILL")
	f.StringVar(&o.executor, "executor", envOr("WEFT_EXECUTOR", agent.ExecutorAuto), "how the local agent runs stages: auto (containerd for stages with an image, host processes for the rest), process or containerd (env WEFT_EXECUTOR)")
	f.StringVar(&o.containerd, "containerd-address", envOr("WEFT_CONTAINERD_ADDRESS", defaultContainerd), "containerd socket (env WEFT_CONTAINERD_ADDRESS)")
	f.Var(sizeValue{&o.logCap}, "log-cap", logCapHelp())
	envAllowFlag(f, &o.envAllow)
	return cmd
}

// logCapHelp describes the --log-cap flag of the commands that run an
// agent.
func logCapHelp() string {
	return "most output an attempt of a stage keeps in its log, e.g. 1GiB: over it the first part and the last " +
		bytesize.Format(agent.DefaultLogTail) + " stay, with a line saying what was dropped between them (default " +
		bytesize.Format(agent.DefaultLogCap) + ", at least " + bytesize.Format(agent.MinLogCap) + ")"
}

func runPipeline(ctx context.Context, g *globals, file string, o runOptions) error {
	log := g.logger()
	p, err := loadPipeline(file)
	if err != nil {
		return err
	}
	text, err := os.ReadFile(file)
	if err != nil {
		return withCode(exitUsage, err)
	}
	var tier subjects.Tier
	if o.priority != "" {
		if tier, err = subjects.ParseTier(o.priority); err != nil {
			return withCode(exitUsage, fmt.Errorf("--priority: %w", err))
		}
	}
	if o.slots < 1 {
		return withCode(exitUsage, fmt.Errorf("--slots must be at least 1, got %d", o.slots))
	}
	if o.logCap != 0 && o.logCap < agent.MinLogCap {
		return withCode(exitUsage, fmt.Errorf("--log-cap must be at least %s, got %s", bytesize.Format(agent.MinLogCap), bytesize.Format(o.logCap)))
	}
	if o.server != "" && (o.state != "" || o.listen != "") {
		return withCode(exitUsage, errors.New("--state and --listen configure the embedded server; they cannot be used with --server"))
	}
	// git finds the branch and commit while the stack starts.
	ref := startGitRef(ctx, filepath.Dir(file), o.branch == "", o.commit == "")
	defer ref.wait()

	cfg := bus.Config{URL: o.server, CredsFile: o.creds, Name: "weft run", Logger: log}
	local := o.server == ""
	if local {
		if o.state == "" {
			tmp, err := os.MkdirTemp("", "weft-run-")
			if err != nil {
				return withCode(exitInfra, err)
			}
			defer os.RemoveAll(tmp)
			cfg.StoreDir = filepath.Join(tmp, "jetstream")
			cfg.Ephemeral = true
		} else {
			cfg.StoreDir = filepath.Join(o.state, "jetstream")
			cfg.Listen = o.listen
			if cfg.Listen == "" {
				cfg.Listen = "127.0.0.1:0"
			}
		}
		if o.listen != "" {
			cfg.Listen = o.listen
		}
	}
	// Removed after the stack below has stopped (defers run last first).
	workDir, err := os.MkdirTemp("", "weft-work-")
	if err != nil {
		return withCode(exitInfra, err)
	}
	defer os.RemoveAll(workDir)
	scfg := embedded.Config{Bus: cfg, Logger: log}
	if local {
		scfg.Dispatchers = 1
		scfg.Agents = []agent.Config{{
			Queues:    localQueues(p.Queue, p.Stages),
			Slots:     o.slots,
			WorkDir:   workDir,
			Env:       os.Environ(),
			EnvAllow:  o.envAllow,
			KillGrace: o.killGrace,
			// One retry of an infrastructure failure: a local run has no
			// other agent to hand it to.
			MaxDeliver:     2,
			Executor:       o.executor,
			Containerd:     container.Config{Address: o.containerd},
			ArtifactLimits: o.artifacts,
			CacheLimits:    o.cache,
			LogCap:         o.logCap,
		}}
	}
	// The stack outlives ctx (Ctrl-C) until the run is cancelled.
	st, err := embedded.Start(context.WithoutCancel(ctx), scfg)
	if err != nil {
		return withCode(exitInfra, err)
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error().Err(err).Msg("local stack")
		}
	}()
	b := st.Bus
	if url := b.ClientURL(); url != "" {
		fmt.Fprintf(g.stderr, "weft: nats server listening on %s (state in %s)\n", url, o.state)
	}

	// Following outlives ctx (Ctrl-C) until the run is cancelled.
	followCtx, stopFollow := context.WithCancel(context.WithoutCancel(ctx))
	defer stopFollow()
	// A component that fails ends the submit and the follow instead of
	// leaving them waiting; stackErr then says what failed.
	submitCtx, stopSubmit := context.WithCancel(ctx)
	defer stopSubmit()
	defer context.AfterFunc(st.Failed(), func() { stopSubmit(); stopFollow() })()
	stackErr := func() error {
		if err := st.Err(); err != nil {
			return withCode(exitInfra, err)
		}
		return nil
	}

	branch, commit := ref.wait()
	if o.branch != "" {
		branch = o.branch
	}
	if o.commit != "" {
		commit = o.commit
	}
	sess := &session{g: g, js: b.JS, out: newPrinter(g.stdout, o.json, p), grace: o.killGrace, stackErr: stackErr}
	trigger := wire.Trigger{
		ID: ulid.Make().String(), File: filepath.Base(file), Pipeline: string(text),
		Branch: branch, Commit: commit, Priority: tier, Time: time.Now(),
	}
	runID, err := sess.submit(ctx, submitCtx, trigger)
	if err != nil {
		return err
	}
	return sess.follow(ctx, followCtx, stopFollow, runID)
}

// localQueues returns every queue the pipeline's stages use, so the local
// agent serves them all.
func localQueues(def string, stages []pipeline.Stage) []string {
	seen := map[string]bool{def: true}
	queues := []string{def}
	for _, s := range stages {
		if !seen[s.Queue] {
			seen[s.Queue] = true
			queues = append(queues, s.Queue)
		}
	}
	return queues
}

// notifyAfter calls f once after d unless the returned stop is called
// first; stop waits for a running f to return.
func notifyAfter(d time.Duration, f func()) (stop func()) {
	done := make(chan struct{})
	t := time.AfterFunc(d, func() { defer close(done); f() })
	return func() {
		if !t.Stop() {
			<-done
		}
	}
}
