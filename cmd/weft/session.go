package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/wire"
)

// session submits a trigger and follows its run on the terminal, for weft
// run and weft trigger --wait.
type session struct {
	g   *globals
	js  jetstream.JetStream
	out *printer
	// grace is how long a cancelled stage may take to stop.
	grace time.Duration
	// stackErr reports a failed local component (weft run), or nil.
	stackErr func() error
}

func (s *session) failed() error {
	if s.stackErr == nil {
		return nil
	}
	return s.stackErr()
}

// submit publishes the trigger on submitCtx (ctx is the user's: Ctrl-C)
// and returns the run id, or an error with its exit code: 2 for an invalid
// trigger, 3 for a refusal for capacity or an unreachable bus.
func (s *session) submit(ctx, submitCtx context.Context, t wire.Trigger) (string, error) {
	stopNotice := notifyAfter(2*time.Second, func() {
		fmt.Fprintln(s.g.stderr, "weft: waiting for a dispatcher to take the trigger...")
	})
	runID, err := client.Submit(submitCtx, s.js, t)
	stopNotice()
	if err == nil {
		return runID, nil
	}
	if serr := s.failed(); serr != nil {
		return "", serr
	}
	var re *client.RefusedError
	switch {
	case errors.As(err, &re) && re.Reason == wire.RefusedInvalid:
		return "", withCode(exitUsage, err)
	case errors.As(err, &re):
		return "", withCode(exitInfra, err)
	case ctx.Err() != nil:
		return "", withCode(exitFailed, errors.New("interrupted before the run started"))
	}
	return "", withCode(exitInfra, err)
}

// follow prints the run until it ends and returns nil when it succeeded.
// On Ctrl-C (ctx) it asks for the run to be cancelled and keeps following
// until the stages are stopped, for at most the grace period plus 5s.
func (s *session) follow(ctx, followCtx context.Context, stopFollow context.CancelFunc, runID string) error {
	s.out.start(runID)
	cancelled := context.AfterFunc(ctx, func() {
		fmt.Fprintln(s.g.stderr, "weft: interrupted, cancelling the run")
		cctx, cancel := context.WithTimeout(followCtx, 5*time.Second)
		defer cancel()
		if err := client.Cancel(cctx, s.js, runID, "interrupted"); err != nil {
			fmt.Fprintf(s.g.stderr, "weft: cancel run %s: %v\n", runID, err)
		}
		time.AfterFunc(s.grace+5*time.Second, stopFollow)
	})
	defer cancelled()

	final, err := client.Follow(followCtx, s.js, runID, s.out.update)
	if err != nil {
		if serr := s.failed(); serr != nil {
			return serr
		}
		if ctx.Err() != nil {
			return withCode(exitFailed, fmt.Errorf("run %s: interrupted and not confirmed cancelled: %w", runID, err))
		}
		return withCode(exitInfra, fmt.Errorf("follow run %s: %w", runID, err))
	}
	if final.State != wire.RunSucceeded {
		return withCode(exitFailed, errSilent)
	}
	return nil
}
