package test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/weft-ci/weft/container"
)

// weftBin is the weft binary the end-to-end tests run, built once by
// TestMain.
var weftBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "weft-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	weftBin, err = BuildWeft(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if code == 0 {
		// Every stack a test started must have stopped all its goroutines.
		// One of nats.go's is exempt: ObjectStore.Put publishes through a
		// JetStream context of its own and removes its connection-status
		// channel when done; when that happens before the context's
		// reconnect watcher first reads the channel, the watcher waits on
		// a nil channel forever (nats.go v1.55.0, jetstream/publish.go,
		// resetPendingAcksOnReconnect). The run store puts each new
		// pipeline spec that way.
		if err := goleak.Find(goleak.IgnoreTopFunction("github.com/nats-io/nats.go/jetstream.(*jetStream).resetPendingAcksOnReconnect")); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	if code == 0 {
		code = checkNoLeftovers()
	}
	os.Exit(code)
}

// checkNoLeftovers fails the suite when a weft container or snapshot is
// left in containerd after all tests ran.
func checkNoLeftovers() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rt, err := container.Connect(ctx, container.Config{Address: ContainerdAddress()})
	if err != nil {
		return 0 // the tests that need containerd said so already
	}
	defer rt.Close()
	ctrs, snaps, err := rt.Leftovers(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "list containerd leftovers: %v\n", err)
		return 1
	}
	if len(ctrs)+len(snaps) > 0 {
		fmt.Fprintf(os.Stderr, "weft left containers %v and snapshots %v in containerd\n", ctrs, snaps)
		return 1
	}
	return 0
}
