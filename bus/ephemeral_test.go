package bus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
)

func openBus(t *testing.T, cfg bus.Config) *bus.Bus {
	t.Helper()
	cfg.StoreDir = t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open bus: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// storages returns the storage of every stream, by stream name.
func storages(t *testing.T, js jetstream.JetStream) map[string]jetstream.StorageType {
	t.Helper()
	out := map[string]jetstream.StorageType{}
	lister := js.ListStreams(t.Context())
	for info := range lister.Info() {
		out[info.Config.Name] = info.Config.Storage
	}
	if err := lister.Err(); err != nil {
		t.Fatalf("list streams: %v", err)
	}
	return out
}

// wantStreams is the stream name of every stream and bucket of package
// subjects.
func wantStreams() []string {
	var names []string
	for _, s := range subjects.Streams(0) {
		names = append(names, s.Name)
	}
	for _, b := range subjects.Buckets(0) {
		names = append(names, "KV_"+b.Name)
	}
	for _, o := range subjects.ObjectBuckets(0) {
		names = append(names, "OBJ_"+o.Name)
	}
	return names
}

func TestProvisionStorage(t *testing.T) {
	onDisk := map[string]bool{subjects.LogsStream: true, "OBJ_" + subjects.ArtifactsBucket: true, "OBJ_" + subjects.CacheBucket: true}
	for _, tc := range []struct {
		name      string
		ephemeral bool
	}{
		{"durable", false},
		{"ephemeral", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := openBus(t, bus.Config{Ephemeral: tc.ephemeral})
			for range 2 { // the second changes nothing
				if err := b.Provision(t.Context(), 0); err != nil {
					t.Fatalf("Provision: %v", err)
				}
				got := storages(t, b.JS)
				for _, name := range wantStreams() {
					st, ok := got[name]
					want := jetstream.FileStorage
					if tc.ephemeral && !onDisk[name] {
						want = jetstream.MemoryStorage
					}
					switch {
					case !ok:
						t.Errorf("stream %s not provisioned", name)
					case st != want:
						t.Errorf("stream %s storage = %v, want %v", name, st, want)
					}
				}
			}
		})
	}
}

func TestEphemeralProvisionUpdatesExisting(t *testing.T) {
	b := openBus(t, bus.Config{Ephemeral: true})
	ctx := t.Context()
	var events subjects.Stream
	for _, s := range subjects.Streams(0) {
		if s.Name == subjects.EventsStream {
			events = s
		}
	}
	old := bus.StreamConfig(events)
	old.Storage, old.MaxAge = jetstream.MemoryStorage, time.Hour
	if _, err := b.JS.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := b.Provision(ctx, 0); err != nil {
		t.Fatalf("Provision over an existing stream: %v", err)
	}
	s, err := b.JS.Stream(ctx, subjects.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.CachedInfo().Config.MaxAge, subjects.DefaultRetention; got != want {
		t.Errorf("%s MaxAge = %v after Provision, want %v", subjects.EventsStream, got, want)
	}
}

func TestEphemeralNeedsEmbedded(t *testing.T) {
	_, err := bus.Open(t.Context(), bus.Config{URL: "nats://127.0.0.1:1", Ephemeral: true})
	if !errors.Is(err, bus.ErrInvalidConfig) {
		t.Fatalf("Open(URL, Ephemeral) = %v, want ErrInvalidConfig", err)
	}
}
