package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/objectstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// storedArtifacts returns the artifacts a stage's finished event lists,
// by the sequence its document records.
func storedArtifacts(t *testing.T, s *Stack, r *wire.Run, stage string) []wire.Artifact {
	t.Helper()
	seq := r.Stage(stage).ArtifactsSeq
	if seq == 0 {
		return nil
	}
	ctx := context.Background()
	events, err := s.Bus.JS.Stream(ctx, subjects.EventsStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := events.GetMsg(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	var ev wire.Event
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatal(err)
	}
	return ev.Artifacts
}

// A stage's artifacts reach every stage that depends on it, directly or
// not, on another agent too, with their digests checked; the store gives
// back the bytes the stage wrote.
func TestArtifactsReachTheStagesThatDependOnThem(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{})
	other := s.AddAgent(agent.Config{Queues: []string{"second"}})
	r, _ := s.Run(t, `name: artifacts
stages:
  - key: build
    commands:
      - mkdir -p bin dist/deep
      - printf app-v1 > bin/app
      - head -c 300000 /dev/urandom > dist/deep/blob
      - echo not an artifact > notes.txt
    artifacts: [bin/*, "dist/**/blob"]
  - key: test
    depends_on: [build]
    commands:
      - test "$(cat bin/app)" = app-v1
      - test "$(wc -c < dist/deep/blob)" -eq 300000
  - key: package
    queue: second
    depends_on: [test]
    commands:
      - test "$(cat bin/app)" = app-v1
      - test ! -e notes.txt
      - sha256sum dist/deep/blob | cut -d' ' -f1 > blob.sum
    artifacts: [blob.sum]
`)
	if r.State != wire.RunSucceeded {
		for _, st := range r.Stages {
			t.Logf("stage %s: %s %s %s", st.Key, st.State, st.Category, st.Message)
		}
		t.Fatalf("run %s, want succeeded", r.State)
	}
	if got := r.Stage("package").Agent; got != other.ID() {
		t.Fatalf("package ran on agent %s, want the second agent %s", got, other.ID())
	}
	built := storedArtifacts(t, s, r, "build")
	if len(built) != 2 || built[0].Path != "bin/app" || built[1].Path != "dist/deep/blob" || built[0].Size != 6 || built[1].Size != 300000 {
		t.Fatalf("build stored %+v, want bin/app (6 bytes) and dist/deep/blob (300000 bytes)", built)
	}
	if r.Stage("build").ArtifactBytes != 300006 {
		t.Errorf("build's document records %d artifact bytes, want 300006", r.Stage("build").ArtifactBytes)
	}
	store, err := objectstore.Open(context.Background(), s.Bus.JS, objectstore.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	read := func(stage, p string) []byte {
		t.Helper()
		rd, err := store.Get(context.Background(), r.ID, stage, p)
		if err != nil {
			t.Fatal(err)
		}
		defer rd.Close()
		data, err := io.ReadAll(rd)
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
	if got := string(read("build", "bin/app")); got != "app-v1" {
		t.Errorf("bin/app holds %q, want app-v1", got)
	}
	blob := read("build", "dist/deep/blob")
	sum := sha256.Sum256(blob)
	if hex.EncodeToString(sum[:]) != built[1].SHA256 {
		t.Errorf("dist/deep/blob's digest %x, the run records %s", sum, built[1].SHA256)
	}
	// The package stage, on the other agent, saw the same bytes.
	if got := strings.TrimSpace(string(read("package", "blob.sum"))); got != built[1].SHA256 {
		t.Errorf("package computed %s for the restored blob, want %s", got, built[1].SHA256)
	}
	if _, err := store.Stat(context.Background(), r.ID, "build", "notes.txt"); !errors.Is(err, objectstore.ErrNotFound) {
		t.Errorf("notes.txt, matched by no pattern, was stored: %v", err)
	}
}

// A match that leaves the workspace through a symlink is refused, naming
// it: the stage fails and nothing of it is stored.
func TestAnArtifactThroughASymlinkOutOfTheWorkspaceIsRefused(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{})
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, _ := s.Run(t, `name: escape
stages:
  - key: build
    commands:
      - printf ok > ok.txt
      - ln -s `+outside+` out
      - ln -s /etc/passwd passwd
    artifacts: [ok.txt, out/secret]
  - key: after
    depends_on: [build]
    commands: ["true"]
`)
	st := r.Stage("build")
	if r.State != wire.RunFailed || st.State != wire.StageFailed || st.Category != wire.CategoryArtifact {
		t.Fatalf("run %s, build %s (%s: %s); want failed with category artifact", r.State, st.State, st.Category, st.Message)
	}
	if !strings.Contains(st.Message, "out/secret") || !strings.Contains(st.Message, "leaves the workspace") {
		t.Errorf("message %q, want the path named as leaving the workspace", st.Message)
	}
	store, err := objectstore.Open(context.Background(), s.Bus.JS, objectstore.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Stat(context.Background(), r.ID, "build", "ok.txt"); !errors.Is(err, objectstore.ErrNotFound) {
		t.Errorf("ok.txt was stored although the stage's artifacts were refused: %v", err)
	}

	r, _ = s.Run(t, "name: escape2\nstages:\n  - key: build\n    commands: [ln -s /etc/passwd passwd]\n    artifacts: [passwd]\n")
	if st := r.Stage("build"); st.Category != wire.CategoryArtifact || !strings.Contains(st.Message, "passwd") {
		t.Errorf("a symlink to /etc/passwd: build %s (%s: %s), want refused naming it", st.State, st.Category, st.Message)
	}
}

// An artifact over the agent's file limit fails its stage with the file,
// its size and the limit named.
func TestAnArtifactOverTheLimitFailsItsStage(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true})
	s.AddAgent(agent.Config{ArtifactLimits: objectstore.Limits{File: 1 << 10}})
	r, _ := s.Run(t, "name: big\nstages:\n  - key: build\n    commands: [head -c 2048 /dev/zero > big.bin]\n    artifacts: [big.bin]\n")
	st := r.Stage("build")
	want := "artifact big.bin: 2 KiB, over the limit of 1 KiB per file"
	if st.Category != wire.CategoryArtifact || !strings.Contains(st.Message, want) {
		t.Fatalf("build %s (%s: %q), want category artifact naming %q", st.State, st.Category, st.Message, want)
	}
}

// weft artifacts ls lists what a run stored, and weft artifacts get
// streams it back byte for byte; a missing artifact is a usage error.
func TestArtifactsCommandsListAndDownload(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Listen: true})
	url := s.Bus.ClientURL()
	r, _ := s.Run(t, "name: cli\nstages:\n  - key: build\n    commands: [mkdir -p bin, head -c 200000 /dev/urandom > bin/app]\n    artifacts: [bin/app]\n")
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s", r.State)
	}
	dir := t.TempDir()
	ls := RunWeft(t, weftBin, dir, nil, "artifacts", "ls", "--server", url, "--json", r.ID)
	var arts []client.ArtifactInfo
	if err := json.Unmarshal([]byte(ls.Stdout), &arts); ls.Code != 0 || err != nil {
		t.Fatalf("weft artifacts ls --json = %d %q %q: %v", ls.Code, ls.Stdout, ls.Stderr, err)
	}
	if len(arts) != 1 || arts[0].Stage != "build" || arts[0].Path != "bin/app" || arts[0].Size != 200000 || arts[0].Expires.Sub(arts[0].Stored) != subjects.DefaultRetention {
		t.Fatalf("weft artifacts ls = %+v, want bin/app of build, 200000 bytes, expiring after the retention", arts)
	}
	get := RunWeft(t, weftBin, dir, nil, "artifacts", "get", "--server", url, r.ID, "build", "bin/app", "-o", "app.bin")
	if get.Code != 0 {
		t.Fatalf("weft artifacts get = %d: %s", get.Code, get.Stderr)
	}
	data, err := os.ReadFile(filepath.Join(dir, "app.bin"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if len(data) != 200000 || hex.EncodeToString(sum[:]) != arts[0].SHA256 {
		t.Errorf("downloaded %d bytes with sha256 %x, want 200000 with %s", len(data), sum, arts[0].SHA256)
	}
	missing := RunWeft(t, weftBin, dir, nil, "artifacts", "get", "--server", url, r.ID, "build", "bin/nothing")
	if missing.Code != 2 || !strings.Contains(missing.Stderr, "no artifact bin/nothing") {
		t.Errorf("get of a missing artifact = %d %q, want exit 2 naming it", missing.Code, missing.Stderr)
	}
	escape := RunWeft(t, weftBin, dir, nil, "artifacts", "get", "--server", url, r.ID, "build", "../etc/passwd")
	if escape.Code != 2 || !strings.Contains(escape.Stderr, "leaves the workspace") {
		t.Errorf("get of ../etc/passwd = %d %q, want exit 2", escape.Code, escape.Stderr)
	}
}

// On a fleet of processes: a stage's artifact reaches a dependent stage
// on a second agent process; weft artifacts get returns its bytes, and a
// signed URL from weft artifacts url, served by weft server --http, the
// same; the URL tampered with is refused.
func TestArtifactsOnAFleetAndTheirSignedURL(t *testing.T) {
	t.Parallel()
	f := startFleet(t, "--http", "127.0.0.1:0")
	url := f.url
	line := f.srv.waitLine(t, &f.srv.stderr, 30*time.Second, "the download address", func(l string) bool { return strings.Contains(l, "artifact downloads on ") })
	base := strings.TrimSuffix(strings.Fields(strings.SplitN(line, "artifact downloads on ", 2)[1])[0], "/artifacts/")
	startWeft(t, nil, "dispatcher", "--server", url)
	startWeft(t, nil, "agent", "--join", url, "--executor", "process", "--queue", "default")
	startWeft(t, nil, "agent", "--join", url, "--executor", "process", "--queue", "second")
	dir := t.TempDir()
	file := filepath.Join(dir, "p.yml")
	if err := os.WriteFile(file, []byte(`name: fleet-artifacts
stages:
  - key: build
    commands: [mkdir -p bin, head -c 150000 /dev/urandom > bin/app]
    artifacts: [bin/app]
  - key: package
    queue: second
    depends_on: [build]
    commands: [sha256sum bin/app | cut -d' ' -f1 > app.sum]
    artifacts: [app.sum]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	trig := RunWeft(t, weftBin, dir, nil, "trigger", "--server", url, "--repo", "acme/app", "--json", file)
	var out struct {
		RunID string `json:"run_id"`
	}
	if err := json.Unmarshal([]byte(trig.Stdout), &out); trig.Code != 0 || err != nil {
		t.Fatalf("weft trigger --json = %d %q %q: %v", trig.Code, trig.Stdout, trig.Stderr, err)
	}
	r, _ := f.s.Wait(t, out.RunID)
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s: %+v", r.State, r.Stages)
	}
	if got := RunWeft(t, weftBin, dir, nil, "artifacts", "get", "--server", url, r.ID, "build", "bin/app", "-o", "app"); got.Code != 0 {
		t.Fatalf("weft artifacts get = %d: %s", got.Code, got.Stderr)
	}
	got := RunWeft(t, weftBin, dir, nil, "artifacts", "get", "--server", url, r.ID, "package", "app.sum", "-o", "-")
	app, err := os.ReadFile(filepath.Join(dir, "app"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(app)
	if strings.TrimSpace(got.Stdout) != hex.EncodeToString(sum[:]) {
		t.Fatalf("the package stage on the second agent read a bin/app with sha256 %q; the artifact's is %x", got.Stdout, sum)
	}
	signed := RunWeft(t, weftBin, dir, nil, "artifacts", "url", "--server", url, "--base", base, "--expires", "1m", r.ID, "build", "bin/app")
	if signed.Code != 0 {
		t.Fatalf("weft artifacts url = %d: %s", signed.Code, signed.Stderr)
	}
	u := strings.TrimSpace(signed.Stdout)
	res, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !bytes.Equal(body, app) || res.Header.Get("X-Weft-SHA256") != hex.EncodeToString(sum[:]) {
		t.Fatalf("GET the signed URL: %d, %d bytes (equal %t)", res.StatusCode, len(body), bytes.Equal(body, app))
	}
	res, err = http.Get(strings.Replace(u, "bin/app", "bin/ap", 1))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 403 {
		t.Errorf("GET a tampered URL: %d, want 403", res.StatusCode)
	}
}
