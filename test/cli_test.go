package test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/internal/busybox"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

func TestExitCodes(t *testing.T) {
	t.Parallel()
	diamond := filepath.Join(Root(), "examples", "diamond.yml")
	tests := []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"help", []string{"--help"}, 0, ""},
		{"trigger help", []string{"trigger", "--help"}, 0, ""},
		{"status help", []string{"status", "--help"}, 0, ""},
		{"queue pause help", []string{"queue", "pause", "--help"}, 0, ""},
		{"queue resume help", []string{"queue", "resume", "--help"}, 0, ""},
		{"dlq ls help", []string{"dlq", "ls", "--help"}, 0, ""},
		{"dlq replay help", []string{"dlq", "replay", "--help"}, 0, ""},
		{"server help", []string{"server", "--help"}, 0, ""},
		{"dispatcher help", []string{"dispatcher", "--help"}, 0, ""},
		{"agent help", []string{"agent", "--help"}, 0, ""},
		{"bench help", []string{"bench", "--help"}, 0, ""},
		{"image import help", []string{"image", "import", "--help"}, 0, ""},
		{"trigger without a server", []string{"trigger", diamond}, 2, "--server"},
		{"agent without a server", []string{"agent"}, 2, "--join"},
		{"unknown bench scenario", []string{"bench", "nope"}, 2, "unknown scenario"},
		{"dlq replay with a bad id", []string{"dlq", "replay", "--server", "nats://127.0.0.1:1", "x"}, 2, "want the number"},
		{"run help", []string{"run", "--help"}, 0, ""},
		{"validate help", []string{"validate", "--help"}, 0, ""},
		{"version", []string{"version"}, 0, ""},
		{"unknown command", []string{"bogus"}, 2, "unknown command"},
		{"missing file argument", []string{"run"}, 2, "accepts 1 arg"},
		{"bad flag value", []string{"run", "--slots", "x", diamond}, 2, "--slots"},
		{"bad priority", []string{"run", "--priority", "urgent", diamond}, 2, "priority"},
		{"no such file", []string{"validate", "nope.yml"}, 2, "nope.yml"},
		{"unreachable server", []string{"run", "--server", "nats://127.0.0.1:1", diamond}, 3, "nats unavailable"},
		{"valid file", []string{"validate", diamond}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := RunWeft(t, weftBin, t.TempDir(), nil, tt.args...)
			if res.Code != tt.code || !strings.Contains(res.Stderr, tt.err) {
				t.Errorf("weft %q exited %d with stderr %q, want %d and %q", tt.args, res.Code, res.Stderr, tt.code, tt.err)
			}
		})
	}
}

func TestRunAgainstAFleet(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Listen: true, Slots: 2})
	file := filepath.Join(Root(), "examples", "diamond.yml")
	res := RunWeft(t, weftBin, t.TempDir(), nil, "run", "--server", s.Bus.ClientURL(), file)
	if res.Code != 0 {
		t.Fatalf("weft run --server exited %d: %s\n%s", res.Code, res.Stdout, res.Stderr)
	}
	for _, want := range []string{"build   | hello from build of diamond", "package * succeeded", "SUCCEEDED"} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, res.Stdout)
		}
	}
}

func TestImageImport(t *testing.T) {
	t.Parallel()
	Containerd(t)
	dir := t.TempDir()
	archive := filepath.Join(dir, "busybox.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	if err := busybox.Write(f, "/bin/busybox"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	garbage := filepath.Join(dir, "garbage.tar")
	if err := os.WriteFile(garbage, []byte("not an archive"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"an OCI archive", []string{"image", "import", "--containerd-address", ContainerdAddress(), archive}, 0, busybox.Ref + "\n", ""},
		{"not an archive", []string{"image", "import", "--containerd-address", ContainerdAddress(), garbage}, 2, "", "garbage.tar"},
		{"no such file", []string{"image", "import", filepath.Join(dir, "nope.tar")}, 2, "", "nope.tar"},
		{"no containerd", []string{"image", "import", "--containerd-address", filepath.Join(dir, "no.sock"), archive}, 3, "", "containerd unavailable"},
	}
	for _, tt := range tests {
		res := RunWeft(t, weftBin, dir, nil, tt.args...)
		if res.Code != tt.code || res.Stdout != tt.stdout || !strings.Contains(res.Stderr, tt.stderr) {
			t.Errorf("%s: weft %q = exit %d, stdout %q, stderr %q; want %d, %q, %q", tt.name, tt.args, res.Code, res.Stdout, res.Stderr, tt.code, tt.stdout, tt.stderr)
		}
	}
}

func TestRunWithoutContainerd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "mixed.yml")
	if err := os.WriteFile(file, []byte(`name: mixed
stages:
  - key: host
    commands: [echo on the host]
  - key: boxed
    image: docker.io/library/golang:1.23
    commands: [go version]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	noSock := filepath.Join(dir, "no.sock")
	// auto: host stages run, image stages fail with a message naming the image.
	res := RunWeft(t, weftBin, dir, nil, "run", "--json", "--containerd-address", noSock, file)
	if res.Code != 1 {
		t.Fatalf("weft run (auto, no containerd) exited %d, want 1: %s", res.Code, res.Stderr)
	}
	r := finalRun(t, decodeEvents(t, res.Stdout))
	host, boxed := r.Stage("host"), r.Stage("boxed")
	if host.State != wire.StageSucceeded || boxed.State != wire.StageFailed || boxed.Category != wire.CategoryInfra ||
		!strings.Contains(boxed.Message, "docker.io/library/golang:1.23") || !strings.Contains(boxed.Message, "containerd") {
		t.Errorf("host = %s; boxed = %s %q %q; want host succeeded, boxed failed infra naming the image and containerd", host.State, boxed.State, boxed.Category, boxed.Message)
	}
	// containerd required: infrastructure error.
	res = RunWeft(t, weftBin, dir, nil, "run", "--executor", "containerd", "--containerd-address", noSock, file)
	if res.Code != 3 || !strings.Contains(res.Stderr, "containerd unavailable") {
		t.Errorf("weft run --executor containerd without containerd = exit %d, stderr %q; want 3 naming containerd", res.Code, res.Stderr)
	}
}

func TestTriggerAndStatus(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Listen: true, Dispatcher: dispatcher.Config{WIPLimit: 1}})
	url := s.Bus.ClientURL()
	dir := t.TempDir()
	g := newGate(t)
	write := func(name, text string) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return f
	}
	blocker := write("blocker.yml", g.pipeline("blocker", ""))
	waiting := write("waiting.yml", "name: waiting\nstages:\n  - key: s\n    commands: [true]\n")
	orphan := write("orphan.yml", "name: orphan\nqueue: gpu\nstages:\n  - key: s\n    commands: [true]\n")

	trigger := func(args ...string) Result {
		return RunWeft(t, weftBin, dir, nil, append([]string{"trigger", "--server", url}, args...)...)
	}
	first := trigger("--repo", "acme/api", "--delivery-id", "push-1", blocker)
	again := trigger("--repo", "acme/api", "--delivery-id", "push-1", blocker)
	if first.Code != 0 || again.Code != 0 || first.Stdout != again.Stdout || len(strings.TrimSpace(first.Stdout)) != 26 {
		t.Fatalf("trigger twice = %d %q / %d %q; want the same run id both times", first.Code, first.Stdout, again.Code, again.Stdout)
	}
	blockerID := strings.TrimSpace(first.Stdout)
	waitFor(t, s, blockerID, "started", stageIs("wait", wire.StageRunning))
	waitingID := strings.TrimSpace(trigger("--repo", "acme/api", waiting).Stdout)
	orphanID := strings.TrimSpace(trigger("--repo", "acme/web", orphan).Stdout)
	waitFor(t, s, waitingID, "pending on wip", func(r *wire.Run) bool { return r.Pending != nil && r.Pending.Reason == wire.PendingWIP })
	waitFor(t, s, orphanID, "queued", stageIs("s", wire.StageQueued))

	res := RunWeft(t, weftBin, dir, nil, "status", "--server", url, "--json")
	var st client.Status
	if err := json.Unmarshal([]byte(res.Stdout), &st); res.Code != 0 || err != nil {
		t.Fatalf("weft status --json = %d %q: %v", res.Code, res.Stderr, err)
	}
	byID := map[string]client.RunStatus{}
	for _, r := range st.Runs {
		byID[r.ID] = r
	}
	if r := byID[waitingID]; r.Reason != wire.PendingWIP || !strings.Contains(r.Detail, "1 of 1 runs of acme/api") {
		t.Errorf("waiting run status %+v, want pending on wip", r)
	}
	if r := byID[orphanID]; len(r.Stages) != 1 || r.Stages[0].Reason != client.StageNoAgent || r.Stages[0].Queue != "gpu" {
		t.Errorf("orphan run status %+v, want its stage waiting for an agent serving gpu", r)
	}
	if r := byID[blockerID]; len(r.Stages) != 1 || r.Stages[0].State != wire.StageRunning {
		t.Errorf("blocker run status %+v, want its stage running", r)
	}
	text := RunWeft(t, weftBin, dir, nil, "status", "--server", url)
	for _, want := range []string{waitingID, "1 of 1 runs of acme/api in flight", "no agent serves queue gpu", "1 agents"} {
		if !strings.Contains(text.Stdout, want) {
			t.Errorf("weft status lacks %q:\n%s", want, text.Stdout)
		}
	}
	g.open(t)
	waited := trigger("--repo", "acme/api", "--wait", waiting)
	if waited.Code != 0 || !strings.Contains(waited.Stdout, "SUCCEEDED") {
		t.Errorf("weft trigger --wait = %d:\n%s\n%s", waited.Code, waited.Stdout, waited.Stderr)
	}
}

func TestTriggerRefusedExitsWithRetryAfter(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Listen: true, Dispatcher: dispatcher.Config{WIPLimit: 1, WIPPolicy: dispatcher.PolicyRefuse, RetryAfter: 9 * time.Second}})
	dir := t.TempDir()
	g := newGate(t)
	f := filepath.Join(dir, "p.yml")
	if err := os.WriteFile(f, []byte(g.pipeline("p", "")), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := RunWeft(t, weftBin, dir, nil, "trigger", "--server", s.Bus.ClientURL(), "--commit", "a", f); res.Code != 0 {
		t.Fatalf("first trigger = %d %s", res.Code, res.Stderr)
	}
	res := RunWeft(t, weftBin, dir, nil, "trigger", "--server", s.Bus.ClientURL(), "--commit", "b", f)
	if res.Code != 3 || !strings.Contains(res.Stderr, "retry after 9s") {
		t.Errorf("second trigger = %d %q, want 3 with a retry-after", res.Code, res.Stderr)
	}
	g.open(t)
}

// weft server -c FILE makes the server from a nats-server configuration
// file and provisions weft's streams in it; the flags that configure the
// server are refused with it.
func TestWeftServerFromAConfigFile(t *testing.T) {
	t.Parallel()
	port := FreePorts(t, 1)[0]
	dir := t.TempDir()
	conf := filepath.Join(dir, "nats.conf")
	text := fmt.Sprintf("listen: 127.0.0.1:%d\nserver_name: from-file\njetstream { store_dir: %q }\n", port, filepath.Join(dir, "js"))
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startWeft(t, nil, "server", "-c", conf, "--state", t.TempDir())
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	srv.waitLine(t, &srv.stderr, 30*time.Second, "listening", func(l string) bool { return strings.Contains(l, "listening on "+url) })
	b := BusWith(t, bus.Config{URL: url})
	if _, err := b.JS.Stream(context.Background(), subjects.JobsStream); err != nil {
		t.Errorf("stream %s on the server from %s: %v", subjects.JobsStream, conf, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "js")); err != nil {
		t.Errorf("the file's store_dir was not used: %v", err)
	}
	res := RunWeft(t, weftBin, "", nil, "server", "-c", conf, "--listen", "127.0.0.1:0")
	if res.Code != 2 || !strings.Contains(res.Stderr, "--listen: with -c "+conf+" the file configures the server") {
		t.Errorf("weft server -c with --listen: exit %d: %s", res.Code, res.Stderr)
	}
}
