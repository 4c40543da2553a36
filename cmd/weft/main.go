// Command weft is the weft CLI: one binary whose subcommands are thin
// wrappers over weft's packages. Exit codes: 0 success, 1 the run failed
// or was cancelled, 2 usage or validation error, 3 infrastructure error.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
	exitInfra  = 3
)

const exitCodesHelp = `Exit codes:
  0  success
  1  the run failed or was cancelled
  2  usage or validation error
  3  infrastructure error (NATS or containerd cannot be reached)`

// exitError carries the exit code a command's error calls for.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// errSilent is a failure already reported to the user (a failed run).
var errSilent = errors.New("")

func main() {
	// SIGINT stops every command; SIGTERM too, but for weft agent, which
	// drains on it (see agentCommand).
	interrupted, stopInt := signal.NotifyContext(context.Background(), os.Interrupt)
	terminated, stopTerm := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	code := run(interrupted, terminated, os.Args[1:], os.Stdout, os.Stderr)
	stopTerm()
	stopInt()
	os.Exit(code)
}

// globals are the flags every command has, its output and its signals.
type globals struct {
	logLevel string
	stdout   io.Writer
	stderr   io.Writer
	// interrupted ends with SIGINT, terminated with SIGTERM; a command's
	// context ends with either.
	interrupted, terminated context.Context
}

func (g *globals) logger() zerolog.Logger {
	lvl, err := zerolog.ParseLevel(g.logLevel)
	if err != nil {
		lvl = zerolog.WarnLevel
	}
	return zerolog.New(zerolog.ConsoleWriter{Out: g.stderr, TimeFormat: "15:04:05.000"}).
		Level(lvl).With().Timestamp().Logger()
}

// run executes the CLI and returns the process exit code.
func run(interrupted, terminated context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr, interrupted: interrupted, terminated: terminated}
	ctx, cancel := context.WithCancel(interrupted)
	defer cancel()
	defer context.AfterFunc(terminated, cancel)()
	root := &cobra.Command{
		Use:   "weft",
		Short: "weft is a CI/CD build fabric on NATS JetStream",
		Long: `weft runs pipelines (YAML DAGs of stages) on agents that pull jobs from
priority-tiered JetStream subjects. With no server configured, weft run
starts everything in-process and runs the pipeline on this machine. A fleet
runs weft server (or any NATS with JetStream), weft dispatcher and
weft agent --join on as many machines as it likes; weft trigger, status,
queue and dlq talk to it.

` + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetArgs(args)
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", envOr("WEFT_LOG_LEVEL", "warn"), "log level: trace, debug, info, warn, error (env WEFT_LOG_LEVEL)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return withCode(exitUsage, err) })
	root.AddCommand(runCommand(g), upCommand(g), apiCommand(g), tokenCommand(g), validateCommand(g), serverCommand(g), dispatcherCommand(g), agentCommand(g), autoscaleCommand(g), triggerCommand(g), statusCommand(g), agentsCommand(g), credsCommand(g), repoCommand(g), webhookCommand(g), intakeCommand(g), auditCommand(g), cancelCommand(g), retryCommand(g), priorityCommand(g), bulkCommand(g), queueCommand(g), dlqCommand(g), artifactsCommand(g), logsCommand(g), benchCommand(g), imageCommand(g), versionCommand(g))

	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	code := exitUsage // cobra's own errors: unknown command, bad args
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if !errors.Is(err, errSilent) {
		fmt.Fprintf(stderr, "weft: %v\n", err)
	}
	return code
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// usageArgs wraps a cobra positional-argument check so that its error
// exits with the usage code.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		return withCode(exitUsage, check(cmd, args))
	}
}

// retentionHelp says what the fleet keeps, and for how long.
const retentionHelp = `Retention: run and stage documents (KV buckets weft_runs, weft_stages),
lifecycle events (stream WEFT_EVENTS), logs (WEFT_LOGS), dead letters
(WEFT_DLQ, WEFT_ADVISORIES) and artifacts (object store weft_artifacts)
are kept for --retention after they were last written: 30 days (720h)
unless set. JetStream enforces it (stream MaxAge, bucket TTL); nothing
sweeps. Pipeline specs (weft_pipelines, one per distinct pipeline) are
kept 1.5 times as long, the last heartbeat of each stage
(WEFT_HEARTBEATS) for an hour, the audit trail of operator actions
(WEFT_AUDIT) as long as runs and at least a year. Jobs and triggers go
once handled. A
process started without --retention keeps the retention the streams
already have.

`
