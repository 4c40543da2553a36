package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/webhook"
	"github.com/weft-ci/weft/wire"
)

// gitRepo makes a git repository with files committed on branch main and
// returns its directory and the commit.
func gitRepo(t *testing.T, files map[string]string) (string, string) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		missing(t, "no git binary (Debian package git)")
	}
	dir := t.TempDir()
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=weft", "-c", "user.email=weft@example.com"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("init", "--quiet", "--initial-branch", "main")
	for name, text := range files {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	run("add", ".")
	run("commit", "--quiet", "-m", "pipeline")
	return dir, run("rev-parse", "HEAD")
}

// githubPayload reads a payload of the webhook package's testdata (real
// GitHub shapes) with its placeholders filled.
func githubPayload(t *testing.T, name string, fill map[string]string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(Root(), "webhook", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for k, v := range fill {
		s = strings.ReplaceAll(s, k, v)
	}
	return []byte(s)
}

// deliver posts a signed delivery and returns the status code.
func deliver(t *testing.T, url, event, id, secret string, body []byte) int {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-GitHub-Delivery", id)
	req.Header.Set("X-Hub-Signature-256", webhook.Sign(secret, body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// triggerRun waits for the run a trigger started and returns its id.
func triggerRun(t *testing.T, s *Stack, triggerID string) string {
	t.Helper()
	kv, err := s.Bus.JS.KeyValue(context.Background(), subjects.DedupBucket)
	if err != nil {
		t.Fatal(err)
	}
	var out wire.Outcome
	if !Eventually(60*time.Second, func() bool {
		e, err := kv.Get(context.Background(), subjects.DedupKey(triggerID))
		return err == nil && json.Unmarshal(e.Value(), &out) == nil && out.RunID != ""
	}) {
		t.Fatalf("trigger %s started no run (outcome %+v)", triggerID, out)
	}
	return out.RunID
}

// The same push delivery posted three times to weft webhook starts one
// run, of the pipeline file at the pushed commit, on the queue the
// default branch's rule gives; its stages run in a workspace holding the
// repository at exactly that commit.
func TestAPushDeliveredThreeTimesStartsOneRun(t *testing.T) {
	t.Parallel()
	repoDir, sha := gitRepo(t, map[string]string{
		".weft.yml": "name: app\nstages:\n  - key: build\n    commands: [echo built $WEFT_COMMIT on $WEFT_BRANCH, git rev-parse HEAD, cat src.txt]\n" +
			"  - key: test\n    depends_on: [build]\n    commands: [git rev-parse HEAD]\n",
		"src.txt": "the source at the commit\n",
	})
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	f.agent(t, "agent-main", "--queue", "main")
	secret := filepath.Join(t.TempDir(), "hook.secret")
	if err := os.WriteFile(secret, []byte("s3cr3t\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := RunWeft(t, weftBin, "", nil, "repo", "add", "acme/app", "--server", f.url, "--clone-url", "file://"+repoDir, "--secret-file", secret); res.Code != 0 {
		t.Fatalf("weft repo add: exit %d: %s", res.Code, res.Stderr)
	}
	hook := startWeft(t, nil, "webhook", "--server", f.url, "--listen", "127.0.0.1:0", "--git-cache", t.TempDir())
	line := hook.waitLine(t, &hook.stderr, 30*time.Second, "webhook listening", func(l string) bool { return strings.Contains(l, "webhook listening on ") })
	url := strings.Fields(strings.SplitN(line, "listening on ", 2)[1])[0]

	const id = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
	body := githubPayload(t, "push.json", map[string]string{"__REPO__": "acme/app", "__SHA__": sha})
	var codes []int
	for range 3 {
		codes = append(codes, deliver(t, url, "push", id, "s3cr3t", body))
	}
	if codes[0] != http.StatusAccepted || codes[1] != http.StatusOK || codes[2] != http.StatusOK {
		t.Errorf("three posts of delivery %s answered %v, want 202, 200, 200", id, codes)
	}
	runID := triggerRun(t, f.s, webhook.TriggerID(id))
	r, updates := f.s.Wait(t, runID)
	if r.State != wire.RunSucceeded || r.Commit != sha || r.Branch != "main" || r.Repo != "acme/app" {
		t.Fatalf("run %s: %s commit %s branch %s repo %s", runID, r.State, r.Commit, r.Branch, r.Repo)
	}
	// The workspace holds the repository at exactly the pushed commit,
	// for the second stage too (the same checkout).
	lines := stageLines(updates)
	for stage, want := range map[string][]string{"build": {"built " + sha + " on main", sha, "the source at the commit"}, "test": {sha}} {
		for _, w := range want {
			if !slices.Contains(lines[stage], w) {
				t.Errorf("stage %s printed %q, want a line %q", stage, lines[stage], w)
			}
		}
	}
	if st := r.Stage("build"); st.Agent != "agent-main" || r.Pipeline.Stage("build").Queue != "main" {
		t.Errorf("build ran on %s, queue %s; want queue main (the default branch's rule)", st.Agent, r.Pipeline.Stage("build").Queue)
	}
	runs, err := f.s.Bus.JS.KeyValue(context.Background(), subjects.RunsBucket)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := runs.Keys(context.Background())
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		t.Fatal(err)
	}
	if len(keys) != 1 {
		t.Errorf("%d runs %v, want one for three posts of one delivery", len(keys), keys)
	}
}
