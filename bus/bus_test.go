package bus_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/test"
)

func TestProvisionIsIdempotent(t *testing.T) {
	b := test.Bus(t) // provisions once
	ctx := t.Context()

	type snapshot struct {
		created time.Time
		cfg     jetstream.StreamConfig
		msgs    uint64
	}
	snap := func() map[string]snapshot {
		out := map[string]snapshot{}
		for name := range b.JS.StreamNames(ctx).Name() {
			s, err := b.JS.Stream(ctx, name)
			if err != nil {
				t.Fatalf("stream %s: %v", name, err)
			}
			info := s.CachedInfo()
			out[name] = snapshot{info.Created, info.Config, info.State.Msgs}
		}
		return out
	}
	if err := bus.EnsureJobConsumers(ctx, b.JS, subjects.DefaultQueue, 0, 0); err != nil {
		t.Fatal(err)
	}
	before := snap()
	for _, s := range subjects.Streams(0) {
		if _, ok := before[s.Name]; !ok {
			t.Errorf("stream %s not provisioned", s.Name)
		}
	}
	for _, name := range []string{"KV_" + subjects.RunsBucket, "KV_" + subjects.WIPBucket, "KV_" + subjects.DedupBucket, "KV_" + subjects.AgentsBucket, "OBJ_" + subjects.ArtifactsBucket} {
		if _, ok := before[name]; !ok {
			t.Errorf("bucket stream %s not provisioned", name)
		}
	}
	if err := bus.Provision(ctx, b.JS, 0); err != nil {
		t.Fatalf("second Provision: %v", err)
	}
	if err := bus.EnsureJobConsumers(ctx, b.JS, subjects.DefaultQueue, time.Second, 0); err != nil {
		t.Fatalf("second EnsureJobConsumers: %v", err)
	}
	after := snap()
	if !reflect.DeepEqual(before, after) {
		t.Errorf("second Provision changed streams:\nbefore %+v\nafter  %+v", before, after)
	}
	for _, tier := range subjects.Tiers {
		c, err := bus.JobConsumer(ctx, b.JS, subjects.DefaultQueue, tier)
		if err != nil {
			t.Fatalf("job consumer %s: %v", tier, err)
		}
		if got, want := c.CachedInfo().Config.FilterSubject, subjects.Job(subjects.DefaultQueue, tier); got != want {
			t.Errorf("consumer %s filter = %q, want %q", tier, got, want)
		}
		if got := c.CachedInfo().Config.AckWait; got != subjects.DefaultAckWait {
			t.Errorf("consumer %s AckWait = %v, want the first creator's %v kept", tier, got, subjects.DefaultAckWait)
		}
	}
}

func TestJobsAreRepublishedAfterStore(t *testing.T) {
	b := test.Bus(t)
	ctx := t.Context()
	if err := bus.EnsureJobConsumers(ctx, b.JS, subjects.DefaultQueue, 0, 0); err != nil {
		t.Fatal(err)
	}
	sub, err := b.Conn.SubscribeSync(subjects.Wake(subjects.DefaultQueue))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.JS.Publish(ctx, subjects.Job(subjects.DefaultQueue, subjects.Low), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("no wake-up: %v", err)
	}
	if len(m.Data) != 0 {
		t.Errorf("wake-up carries %d bytes, want headers only", len(m.Data))
	}
	c, err := bus.JobConsumer(ctx, b.JS, subjects.DefaultQueue, subjects.Low)
	if err != nil {
		t.Fatal(err)
	}
	// The server republishes a stored job before its consumer counts it:
	// a no-wait fetch right after the wake-up can miss it, so wait for it.
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for range batch.Messages() {
		n++
	}
	if n != 1 {
		t.Errorf("fetched %d jobs after the wake-up, want 1 (%v)", n, batch.Error())
	}
}

func TestOpenUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := bus.Open(ctx, bus.Config{URL: "nats://127.0.0.1:1", ConnectTimeout: time.Second})
	if !errors.Is(err, bus.ErrUnavailable) {
		t.Fatalf("Open(unreachable) = %v, want ErrUnavailable", err)
	}
}

// A client of a leaf node that reaches its hub's streams (JSDomain) and
// connects before the leaf's link to the hub is up is answered "jetstream
// not enabled" at first: Open asks again and succeeds once the hub comes
// (the edge agent of TestAnEdgeAgentRunsHubStagesAcrossALeafRestart exited
// on that first answer).
func TestOpenWaitsForALeafsHub(t *testing.T) {
	ports := test.FreePorts(t, 2)
	hubLeaf := fmt.Sprintf("127.0.0.1:%d", ports[0])
	test.BusWith(t, bus.Config{Listen: fmt.Sprintf("127.0.0.1:%d", ports[1]), ServerName: "edge", Domain: "edge",
		Leaf: []string{"nats://" + hubLeaf}, Logger: test.Logger(t)})
	opened := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		b, err := bus.Open(ctx, bus.Config{URL: fmt.Sprintf("nats://127.0.0.1:%d", ports[1]), JSDomain: "hub", ConnectTimeout: 20 * time.Second})
		if err == nil {
			b.Close()
		}
		opened <- err
	}()
	select {
	case err := <-opened:
		t.Fatalf("Open returned before the hub was up: %v", err)
	case <-time.After(time.Second): // long enough to have been answered "not enabled"
	}
	test.BusWith(t, bus.Config{ServerName: "hub", Domain: "hub", LeafListen: hubLeaf, Logger: test.Logger(t)})
	if err := <-opened; err != nil {
		t.Fatalf("Open through the leaf once its hub is up: %v", err)
	}
}
