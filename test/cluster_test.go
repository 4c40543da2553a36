package test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// cluster is n weft server processes forming one NATS cluster, and a
// client connection to all of them.
type cluster struct {
	fleet
	names   []string
	urls    []string
	servers []*proc
}

// startCluster starts n members with the same routes, waits until each
// has provisioned weft's streams, and connects to all of them.
func startCluster(t *testing.T, n int) *cluster {
	t.Helper()
	ports := FreePorts(t, 2*n)
	var routes []string
	for i := range n {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[n+i]))
	}
	c := &cluster{}
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		c.names = append(c.names, name)
		c.urls = append(c.urls, fmt.Sprintf("nats://127.0.0.1:%d", ports[i]))
		c.servers = append(c.servers, startWeft(t, nil, "server", "--server-name", name, "--state", t.TempDir(),
			"--listen", fmt.Sprintf("127.0.0.1:%d", ports[i]), "--cluster", "weft",
			"--cluster-listen", fmt.Sprintf("127.0.0.1:%d", ports[n+i]), "--routes", strings.Join(routes, ",")))
	}
	for i, p := range c.servers {
		p.waitLine(t, &p.stderr, time.Minute, c.names[i]+" provisioned", func(l string) bool { return strings.Contains(l, "listening on ") })
	}
	c.url = strings.Join(c.urls, ",")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := bus.Open(ctx, bus.Config{URL: c.url})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	c.srv, c.s = c.servers[0], &Stack{Bus: b, t: t}
	return c
}

// agentsSeen returns the ids `weft agents --json` lists through url.
func agentsSeen(t *testing.T, url string) []string {
	t.Helper()
	res := RunWeft(t, weftBin, t.TempDir(), nil, "agents", "--server", url, "--json")
	if res.Code != 0 {
		t.Fatalf("weft agents exited %d: %s", res.Code, res.Stderr)
	}
	var agents []wire.Agent
	if err := json.Unmarshal([]byte(res.Stdout), &agents); err != nil {
		t.Fatalf("weft agents --json printed %q: %v", res.Stdout, err)
	}
	var ids []string
	for _, a := range agents {
		ids = append(ids, a.ID)
	}
	return ids
}

// On a three-member cluster every stream and bucket has three copies;
// the member leading the jobs stream is killed while runs are mid-stage,
// and every run still finishes, each stage once, while weft agents shows
// the agents throughout.
func TestAClusterLosesAMemberMidRunAndNothingIsLost(t *testing.T) {
	t.Parallel()
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, name := range []string{subjects.JobsStream, "KV_" + subjects.RunsBucket, "OBJ_" + subjects.ArtifactsBucket} {
		st, err := c.s.Bus.JS.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if r := st.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("stream %s has %d replicas, want 3", name, r)
		}
	}
	d := startWeft(t, nil, "dispatcher", "--server", c.url)
	aa := c.agent(t, "agent-a", "--slots", "3")
	ab := c.agent(t, "agent-b", "--slots", "3")
	t.Cleanup(func() {
		if t.Failed() {
			for i, p := range append([]*proc{d, aa, ab}, c.servers...) {
				l := p.stderr.all()
				t.Logf("process %d:\n%s", i, strings.Join(l[max(0, len(l)-60):], "\n"))
			}
		}
	})
	if got := strings.Join(agentsSeen(t, c.url), ","); got != "agent-a,agent-b" {
		t.Fatalf("weft agents before the kill: %s", got)
	}

	g := newGate(t)
	text := fmt.Sprintf("name: clustered\nenv: {GATE: %q}\nstages:\n  - key: wait\n    commands: ['while [ ! -f \"$GATE\" ]; do sleep 0.02; done']\n  - key: after\n    depends_on: [wait]\n    commands: [echo after the loss]\n", string(g))
	var ids []string
	for i := range 5 { // over the WIP limit of one repository
		ids = append(ids, c.s.Submit(t, text, func(tr *wire.Trigger) { tr.Repo = fmt.Sprintf("acme/r%d", i) }))
	}
	for _, id := range ids {
		waitFor(t, c.s, id, "running its first stage", func(r *wire.Run) bool { return r.Stage("wait").State == wire.StageRunning })
	}

	st, err := c.s.Bus.JS.Stream(ctx, subjects.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	leader := st.CachedInfo().Cluster.Leader
	victim := -1
	for i, name := range c.names {
		if name == leader {
			victim = i
		}
	}
	if victim < 0 {
		t.Fatalf("the jobs stream's leader is %q, not a member", leader)
	}
	if err := c.servers[victim].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-c.servers[victim].done
	var rest []string
	for i, u := range c.urls {
		if i != victim {
			rest = append(rest, u)
		}
	}
	g.open(t)

	for _, id := range ids {
		r, _ := c.s.Wait(t, id)
		if r.State != wire.RunSucceeded {
			t.Errorf("run %s %s after losing member %s: %+v", id, r.State, leader, r.Stages)
		}
		for _, st := range r.Stages {
			if st.State != wire.StageSucceeded {
				t.Errorf("run %s stage %s %s", id, st.Key, st.State)
			}
		}
		for stage, n := range finishedEvents(t, c.s, r) {
			if n != 1 {
				t.Errorf("run %s stage %s finished %d times", id, stage, n)
			}
		}
	}
	if got := strings.Join(agentsSeen(t, strings.Join(rest, ",")), ","); got != "agent-a,agent-b" {
		t.Errorf("weft agents after losing %s: %s", leader, got)
	}
}
