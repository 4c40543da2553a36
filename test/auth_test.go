package test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/auth"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// violations records the permission errors the server sends a
// connection.
type violations struct {
	mu   sync.Mutex
	seen []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if errors.Is(err, nats.ErrPermissionViolation) {
		v.mu.Lock()
		v.seen = append(v.seen, err.Error())
		v.mu.Unlock()
	}
}

// denied waits for a permissions violation naming kind (Publish or
// Subscription) and subject.
func (v *violations) denied(t *testing.T, what, kind, subject string) {
	t.Helper()
	want := fmt.Sprintf("Permissions Violation for %s to %q", kind, subject)
	if !Eventually(10*time.Second, func() bool {
		v.mu.Lock()
		defer v.mu.Unlock()
		for _, s := range v.seen {
			if strings.Contains(s, want) {
				return true
			}
		}
		return false
	}) {
		v.mu.Lock()
		defer v.mu.Unlock()
		t.Errorf("%s: no %q; violations seen: %q", what, want, v.seen)
	}
}

// connectAs connects to url with the credentials in creds, as weft's
// clients do (their inbox prefix), recording permission errors.
func connectAs(t *testing.T, url, creds string) (*nats.Conn, *violations) {
	t.Helper()
	id, err := auth.ReadCreds(creds)
	if err != nil {
		t.Fatal(err)
	}
	v := &violations{}
	nc, err := nats.Connect(url, nats.UserCredentials(creds), nats.CustomInboxPrefix(id.InboxPrefix()), nats.ErrorHandler(v.handler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc, v
}

// A server with auth on refuses a client without credentials, or with
// credentials another server's keys signed, saying what is missing.
func TestAServerWithAuthRefusesClientsWithoutCredentials(t *testing.T) {
	t.Parallel()
	f := startAuthFleet(t)
	res := RunWeft(t, weftBin, "", []string{"WEFT_CREDS="}, "status", "--server", f.url)
	if res.Code != 3 || !strings.Contains(res.Stderr, "the server requires credentials and none were given: pass --creds FILE") {
		t.Errorf("weft status without credentials: exit %d, want 3 and a word on credentials:\n%s", res.Code, res.Stderr)
	}
	other := startAuthFleet(t)
	foreign := other.mint(t, "operator")
	res = RunWeft(t, weftBin, "", nil, "status", "--server", f.url, "--creds", foreign)
	if res.Code != 3 || !strings.Contains(res.Stderr, "the server refused the credentials in "+foreign) {
		t.Errorf("weft status with another server's credentials: exit %d, want 3 and a refusal:\n%s", res.Code, res.Stderr)
	}
	res = RunWeft(t, weftBin, "", nil, "status", "--server", f.url, "--creds", f.creds)
	if res.Code != 0 {
		t.Errorf("weft status with operator credentials: exit %d\n%s", res.Code, res.Stderr)
	}
	if _, err := nats.Connect(f.url); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("a bare NATS client connected: %v, want an authorization violation", err)
	}
}

// An agent's credentials pull and acknowledge its own queues' jobs and
// nothing else: another queue's jobs, the runs bucket, creating a
// consumer, publishing a trigger and reading others' replies are each
// refused with a permissions violation.
func TestAgentCredentialsAreLeastPrivilege(t *testing.T) {
	t.Parallel()
	f := startAuthFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url, "--creds", f.mint(t, "dispatcher"))
	// The queues' consumers, as dispatchers make them for agents.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	id := f.s.Submit(t, "name: a\nstages:\n  - key: s\n    queue: main\n    commands: [true]\n")
	waitFor(t, f.s, id, "queued", func(r *wire.Run) bool { return r.Stage("s").State == wire.StageQueued })
	for _, q := range []string{"main", "pr"} {
		m, err := f.s.Bus.Conn.RequestWithContext(ctx, subjects.QueueOpen(q), []byte(`{"queue":"`+q+`"}`))
		if err != nil || strings.Contains(string(m.Data), "error") {
			t.Fatalf("open queue %s: %v %v", q, err, m)
		}
	}

	nc, v := connectAs(t, f.url, f.mint(t, "agent", "--queue", "main"))
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 2*time.Second) }

	// Its own queue: the job is there to take.
	c, err := js.Consumer(ctx, subjects.JobsStream, subjects.JobConsumer("main", subjects.Normal))
	if err != nil {
		t.Fatalf("the agent's own consumer: %v", err)
	}
	batch, err := c.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for m := range batch.Messages() {
		got++
		if err := m.Nak(); err != nil {
			t.Errorf("nak its own job: %v", err)
		}
	}
	if got != 1 {
		t.Errorf("fetched %d jobs of its own queue, want 1 (err %v)", got, batch.Error())
	}

	// Another queue's jobs.
	other := subjects.JobConsumer("pr", subjects.Normal)
	sctx, scancel := short()
	_, err = js.Consumer(sctx, subjects.JobsStream, other)
	scancel()
	if err == nil {
		t.Error("the agent read another queue's consumer")
	}
	v.denied(t, "another queue's consumer", "Publish", "$JS.API.CONSUMER.INFO."+subjects.JobsStream+"."+other)
	_, _ = nc.Request("$JS.API.CONSUMER.MSG.NEXT."+subjects.JobsStream+"."+other, []byte(`{"batch":1,"expires":1000000000}`), 2*time.Second)
	v.denied(t, "another queue's jobs", "Publish", "$JS.API.CONSUMER.MSG.NEXT."+subjects.JobsStream+"."+other)

	// The runs bucket.
	sctx, scancel = short()
	_, err = js.KeyValue(sctx, subjects.RunsBucket)
	scancel()
	if err == nil {
		t.Error("the agent opened the runs bucket")
	}
	v.denied(t, "the runs bucket", "Publish", "$JS.API.STREAM.INFO.KV_"+subjects.RunsBucket)
	_, _ = nc.Request("$JS.API.DIRECT.GET.KV_"+subjects.RunsBucket+"."+subjects.KVSubject(subjects.RunsBucket, id), nil, 2*time.Second)
	v.denied(t, "a run document", "Publish", "$JS.API.DIRECT.GET.KV_"+subjects.RunsBucket+"."+subjects.KVSubject(subjects.RunsBucket, id))

	// Creating a consumer.
	sctx, scancel = short()
	_, err = js.CreateConsumer(sctx, subjects.JobsStream, jetstream.ConsumerConfig{Durable: "mine", FilterSubject: subjects.AllJobs})
	scancel()
	if err == nil {
		t.Error("the agent created a consumer on the jobs stream")
	}
	v.denied(t, "creating a consumer", "Publish", "$JS.API.CONSUMER.CREATE."+subjects.JobsStream+".mine."+subjects.AllJobs)

	// Publishing a trigger.
	if err := nc.Publish(subjects.Trigger("acme/app"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	v.denied(t, "publishing a trigger", "Publish", subjects.Trigger("acme/app"))

	// Others' replies.
	if _, err := nc.SubscribeSync("_INBOX.>"); err != nil {
		t.Fatal(err)
	}
	v.denied(t, "others' replies", "Subscription", "_INBOX.>")

	// None of that cost the job: it is still queued, and the stream holds
	// no trigger but the one submitted.
	r, err := client.Get(ctx, f.s.Bus.JS, id)
	if err != nil || r.Stage("s").State != wire.StageQueued {
		t.Errorf("run %s after the refusals: %v, %v", id, r, err)
	}
	st, err := f.s.Bus.JS.Stream(ctx, subjects.TriggersStream)
	if err != nil {
		t.Fatal(err)
	}
	if n := st.CachedInfo().State.Msgs; n > 1 {
		t.Errorf("the triggers stream holds %d messages after a refused publish, want at most the one submitted", n)
	}
}

// weft agent --join URL --creds FILE, with nothing else, serves its
// credentials' queue and runs a job triggered with trigger credentials;
// an agent whose credentials carry a label takes the stage that asks for
// it.
func TestAnAgentJoinsWithItsCredentialsAlone(t *testing.T) {
	t.Parallel()
	f := startAuthFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url, "--creds", f.mint(t, "dispatcher"))
	plain := startWeft(t, nil, "agent", "--join", f.url, "--creds", f.mint(t, "agent", "--queue", "main"))
	gpu := startWeft(t, nil, "agent", "--join", f.url, "--creds", f.mint(t, "agent", "--queue", "main", "--label", "gpu=A100"), "--id", "gpu-agent")
	for _, p := range []*proc{plain, gpu} {
		p.waitLine(t, &p.stderr, 30*time.Second, "agent joined", func(l string) bool { return strings.Contains(l, "joined "+f.url) })
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "p.yml")
	pipeline := "name: creds\nstages:\n  - key: build\n    queue: main\n    commands: [echo built]\n" +
		"  - key: train\n    queue: main\n    agents: {gpu: A100}\n    commands: [echo trained]\n"
	if err := os.WriteFile(file, []byte(pipeline), 0o644); err != nil {
		t.Fatal(err)
	}
	res := RunWeft(t, weftBin, dir, nil, "run", "--server", f.url, "--creds", f.mint(t, "trigger"), "--json", file)
	if res.Code != 0 {
		t.Fatalf("weft run with trigger credentials: exit %d\n%s\n%s", res.Code, res.Stdout, res.Stderr)
	}
	var started struct {
		RunID string `json:"run_id"`
	}
	if err := json.Unmarshal([]byte(strings.SplitN(res.Stdout, "\n", 2)[0]), &started); err != nil || started.RunID == "" {
		t.Fatalf("weft run --json printed no run id first: %v\n%s", err, res.Stdout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := client.Get(ctx, f.s.Bus.JS, started.RunID)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s: %s", r.ID, r.State)
	}
	if a := r.Stage("train").Agent; a != "gpu-agent" {
		t.Errorf("the stage asking for gpu=A100 ran on %q, want gpu-agent", a)
	}
}
