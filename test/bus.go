package test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/bus"
)

// Bus starts an embedded nats-server with JetStream in a temporary store,
// provisions weft's streams and buckets, and closes both when the test ends.
func Bus(t testing.TB) *bus.Bus {
	t.Helper()
	return BusWith(t, bus.Config{})
}

// BusWith is Bus with a configuration; StoreDir defaults to t.TempDir().
func BusWith(t testing.TB, cfg bus.Config) *bus.Bus {
	t.Helper()
	if cfg.StoreDir == "" {
		cfg.StoreDir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open bus: %v", err)
	}
	t.Cleanup(b.Close)
	if err := bus.Provision(ctx, b.JS, 0); err != nil {
		t.Fatalf("provision: %v", err)
	}
	return b
}

// Logger returns a logger that writes to the test log at warn level.
func Logger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel).With().Timestamp().Logger()
}
