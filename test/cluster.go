package test

import (
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/weft-ci/weft/bus"
)

// Cluster is an in-process NATS cluster: n embedded servers routed to
// each other, each with its own store, on loopback ports that stay the
// same when a member is stopped and started again.
type Cluster struct {
	t       testing.TB
	mu      sync.Mutex
	configs []bus.Config
	members []*bus.Bus // nil while a member is stopped
}

// StartCluster starts n members at once (the first cannot finish
// starting JetStream alone: its meta group needs a quorum), provisions
// weft's streams and buckets with n replicas, and stops every member
// when the test ends.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	ports := FreePorts(t, 2*n)
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[n+i]))
	}
	c := &Cluster{t: t, members: make([]*bus.Bus, n)}
	for i := range n {
		c.configs = append(c.configs, bus.Config{
			StoreDir:   t.TempDir(),
			ServerName: fmt.Sprintf("m%d", i+1),
			Listen:     fmt.Sprintf("127.0.0.1:%d", ports[i]),
			Cluster:    &bus.Cluster{Name: "weft-test", Listen: fmt.Sprintf("127.0.0.1:%d", ports[n+i]), Routes: routes},
			Logger:     Logger(t),
		})
	}
	t.Cleanup(func() {
		for i := range n {
			c.Stop(i)
		}
	})
	for i := range n {
		c.Start(i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, _, err := bus.Establish(ctx, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, bus.ProvisionReplicated(ctx, c.Member(0).JS, 0, n)
	}); err != nil {
		t.Fatalf("provision the cluster: %v", err)
	}
	return c
}

// Member returns member i's bus, nil while it is stopped.
func (c *Cluster) Member(i int) *bus.Bus {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i]
}

// Start starts member i again on its store and ports; it is a no-op
// for a member that runs. The others' routes find it again by
// themselves.
func (c *Cluster) Start(i int) {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.members[i] != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, c.configs[i])
	if err != nil {
		c.t.Fatalf("start cluster member %s: %v", c.configs[i].ServerName, err)
	}
	c.members[i] = b
}

// Stop shuts member i down and waits until it has stopped, as a crash
// would take it away: its clients lose it, its store stays.
func (c *Cluster) Stop(i int) {
	c.mu.Lock()
	b := c.members[i]
	c.members[i] = nil
	c.mu.Unlock()
	if b != nil {
		b.Close()
	}
}

// FreePorts returns n loopback TCP ports nobody listens on now.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}
