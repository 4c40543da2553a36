package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	code, err := postDelivery(url, event, id, secret, body)
	if err != nil {
		t.Fatalf("post delivery %s: %v", id, err)
	}
	return code
}

// startBridge adds repo (cloned from dir, its statuses posted to api) and
// starts weft webhook; it returns the delivery URL. The webhook secret is
// s3cr3t and the token gh-token.
func startBridge(t *testing.T, f *fleet, repo, dir, api string) string {
	t.Helper()
	secrets := t.TempDir()
	for name, v := range map[string]string{"hook.secret": "s3cr3t\n", "token": "gh-token\n"} {
		if err := os.WriteFile(filepath.Join(secrets, name), []byte(v), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if res := RunWeft(t, weftBin, "", nil, "repo", "add", repo, "--server", f.url, "--clone-url", "file://"+dir,
		"--secret-file", filepath.Join(secrets, "hook.secret"), "--token-file", filepath.Join(secrets, "token"), "--api-base", api); res.Code != 0 {
		t.Fatalf("weft repo add: exit %d: %s", res.Code, res.Stderr)
	}
	hook := startWeft(t, nil, "webhook", "--server", f.url, "--listen", "127.0.0.1:0", "--git-cache", t.TempDir(), "--public-url", "http://weft.test")
	line := hook.waitLine(t, &hook.stderr, 30*time.Second, "webhook listening", func(l string) bool { return strings.Contains(l, "webhook listening on ") })
	return strings.Fields(strings.SplitN(line, "listening on ", 2)[1])[0]
}

// triggerRun waits for the run a trigger started and returns its id. The
// dispatcher records the trigger's outcome, naming the run, before it
// writes the run's document: it waits for both.
func triggerRun(t *testing.T, s *Stack, triggerID string) string {
	t.Helper()
	kv, err := s.Bus.JS.KeyValue(context.Background(), subjects.DedupBucket)
	if err != nil {
		t.Fatal(err)
	}
	runs, err := s.Bus.JS.KeyValue(context.Background(), subjects.RunsBucket)
	if err != nil {
		t.Fatal(err)
	}
	var out wire.Outcome
	if !Eventually(60*time.Second, func() bool {
		e, err := kv.Get(context.Background(), subjects.DedupKey(triggerID))
		if err != nil || json.Unmarshal(e.Value(), &out) != nil || out.RunID == "" {
			return false
		}
		_, err = runs.Get(context.Background(), out.RunID)
		return err == nil
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
	api := startFakeGitHub(t)
	url := startBridge(t, f, "acme/app", repoDir, api.srv.URL)

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
	// GitHub got pending, then success, for that commit.
	got := api.waitStatus(t, "success", 30*time.Second)
	var states []string
	for _, st := range got {
		if st.Path != "/repos/acme/app/statuses/"+sha || st.Context != "weft/app" || st.Authorization != "Bearer gh-token" {
			t.Errorf("status %+v: want weft/app on /repos/acme/app/statuses/%s with the repository's token", st, sha)
		}
		states = append(states, st.State)
	}
	if !slices.Equal(states, []string{"pending", "success"}) {
		t.Errorf("statuses %v, want pending then success", states)
	}
	if !strings.HasSuffix(got[len(got)-1].TargetURL, "/runs/"+runID) {
		t.Errorf("target URL %q, want the run's page", got[len(got)-1].TargetURL)
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

// fakeGitHub plays GitHub's REST API on loopback: it records the commit
// statuses posted to it and answers each with what answer says.
type fakeGitHub struct {
	srv *httptest.Server

	mu       sync.Mutex
	statuses []postedStatus // accepted
	all      []postedStatus // every request
	tries    int
	answer   func(try int, w http.ResponseWriter) bool // false: answered with a refusal
	// hooks serves the hook deliveries API when set; false: not its path.
	hooks func(w http.ResponseWriter, r *http.Request) bool
}

// postedStatus is a status request as received.
type postedStatus struct {
	Path          string
	State         string `json:"state"`
	Context       string `json:"context"`
	Description   string `json:"description"`
	TargetURL     string `json:"target_url"`
	Authorization string
	At            time.Time
}

func startFakeGitHub(t *testing.T) *fakeGitHub {
	t.Helper()
	g := &fakeGitHub{}
	g.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.hooks != nil && g.hooks(w, r) {
			return
		}
		if r.Method != http.MethodPost || !strings.Contains(r.URL.Path, "/statuses/") {
			http.NotFound(w, r)
			return
		}
		var st postedStatus
		if err := json.NewDecoder(r.Body).Decode(&st); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		st.Path, st.Authorization, st.At = r.URL.Path, r.Header.Get("Authorization"), time.Now()
		g.mu.Lock()
		defer g.mu.Unlock()
		g.tries++
		g.all = append(g.all, st)
		if g.answer != nil && !g.answer(g.tries, w) {
			return
		}
		g.statuses = append(g.statuses, st)
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"state":"` + st.State + `"}`))
	}))
	t.Cleanup(g.srv.Close)
	return g
}

// posted returns the statuses accepted so far and the requests made.
func (g *fakeGitHub) posted() ([]postedStatus, int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.statuses), g.tries
}

// waitStatus waits for an accepted status of state and returns them all.
func (g *fakeGitHub) waitStatus(t *testing.T, state string, within time.Duration) []postedStatus {
	t.Helper()
	var got []postedStatus
	if !Eventually(within, func() bool {
		got, _ = g.posted()
		return slices.ContainsFunc(got, func(s postedStatus) bool { return s.State == state })
	}) {
		t.Fatalf("no %s status within %s; got %+v", state, within, got)
	}
	return got
}

// requests returns every status request of context.
func (g *fakeGitHub) requests(context string) []postedStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []postedStatus
	for _, st := range g.all {
		if st.Context == context {
			out = append(out, st)
		}
	}
	return out
}

// A status API that answers 403 with a rate-limit reset gets the status
// after the reset, without delaying the run; 50 rapid updates of one
// context while it refuses are sent as far fewer requests, the latest
// last.
func TestCommitStatusesWaitOutARateLimitAndCoalesce(t *testing.T) {
	t.Parallel()
	repoDir, sha := gitRepo(t, map[string]string{".weft.yml": "name: app\nstages:\n  - key: build\n    commands: [echo quick]\n"})
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	f.agent(t, "agent-rl", "--queue", "main")
	api := startFakeGitHub(t)
	// Refused until the reset, a few seconds off (in whole seconds, as
	// GitHub gives it).
	reset := time.Now().Add(3 * time.Second).Truncate(time.Second).Add(time.Second)
	api.answer = func(_ int, w http.ResponseWriter) bool {
		if time.Now().Before(reset) {
			w.Header().Set("X-RateLimit-Limit", "5000")
			w.Header().Set("X-RateLimit-Remaining", "0")
			w.Header().Set("X-RateLimit-Reset", strconv.FormatInt(reset.Unix(), 10))
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"message":"API rate limit exceeded"}`))
			return false
		}
		return true
	}
	url := startBridge(t, f, "acme/app", repoDir, api.srv.URL)
	const id = "9a7a3b1e-cc78-11e3-81ab-4c9367dc0958"
	if code := deliver(t, url, "push", id, "s3cr3t", githubPayload(t, "push.json", map[string]string{"__REPO__": "acme/app", "__SHA__": sha})); code != http.StatusAccepted {
		t.Fatalf("delivery answered %d", code)
	}
	// 50 updates of one context at once, as the reporter queues them.
	for i := range 50 {
		data, _ := json.Marshal(webhook.Status{Repo: "acme/app", Commit: sha, Context: "weft/burst", State: "pending", Description: fmt.Sprintf("step %d", i)})
		if _, err := f.s.Bus.JS.Publish(context.Background(), subjects.Status("acme/app", sha, "weft/burst"), data); err != nil {
			t.Fatal(err)
		}
	}
	r, _ := f.s.Wait(t, triggerRun(t, f.s, webhook.TriggerID(id)))
	if r.State != wire.RunSucceeded || !r.Finished.Before(reset) {
		t.Fatalf("run %s finished at %s; want succeeded before the rate limit's reset at %s", r.State, r.Finished.Format(time.StampMilli), reset.Format(time.StampMilli))
	}
	got := api.waitStatus(t, "success", 60*time.Second)
	if first := got[0]; first.At.Before(reset) {
		t.Errorf("a status was accepted at %s, before the reset %s", first.At.Format(time.StampMilli), reset.Format(time.StampMilli))
	}
	if last := got[len(got)-1]; last.Context == "weft/app" && last.State != "success" {
		t.Errorf("the last weft/app status is %s, want success", last.State)
	}
	var burst []postedStatus
	if !Eventually(30*time.Second, func() bool {
		burst = api.requests("weft/burst")
		return len(burst) > 0 && burst[len(burst)-1].Description == "step 49" && burst[len(burst)-1].At.After(reset)
	}) {
		t.Fatalf("the burst's requests %+v: want the last one, step 49, sent after the reset", burst)
	}
	if len(burst) > 5 {
		t.Errorf("50 updates of one context made %d requests, want far fewer", len(burst))
	}
	t.Logf("rate limit reset at %s; run finished %s before it; 50 updates of one context made %d requests", reset.Format(time.StampMilli), reset.Sub(r.Finished).Round(time.Millisecond), len(burst))
}

// Pull requests run on queue pr at the head commit; the repository's
// secrets reach the stages of one from the repository itself and never
// those of one from a fork.
func TestPullRequestsRunOnQueuePRAndForksGetNoSecrets(t *testing.T) {
	t.Parallel()
	repoDir, sha := gitRepo(t, map[string]string{".weft.yml": "name: app\nstages:\n  - key: check\n    commands: ['echo \"key=${DEPLOY_KEY:-none}\"', git rev-parse HEAD]\n"})
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	f.agent(t, "agent-pr", "--queue", "pr")
	api := startFakeGitHub(t)
	url := startBridge(t, f, "acme/app", repoDir, api.srv.URL)
	key := filepath.Join(t.TempDir(), "deploy.key")
	if err := os.WriteFile(key, []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := RunWeft(t, weftBin, "", nil, "repo", "set", "acme/app", "--server", f.url, "--secret", "DEPLOY_KEY="+key); res.Code != 0 {
		t.Fatalf("weft repo set --secret: exit %d: %s", res.Code, res.Stderr)
	}
	for _, c := range []struct {
		id, headRepo, owner, fork, want string
	}{
		{"1b0c7a10-cc79-11e3-81ab-4c9367dc0958", "acme/app", "acme", "false", "key=hunter2"},
		{"2c1d8b20-cc79-11e3-81ab-4c9367dc0958", "contributor/app", "contributor", "true", "key=none"},
	} {
		body := githubPayload(t, "pull_request.json", map[string]string{"__REPO__": "acme/app", "__SHA__": sha, "__HEAD_REPO__": c.headRepo, "__HEAD_OWNER__": c.owner, "__FORK__": c.fork})
		if code := deliver(t, url, "pull_request", c.id, "s3cr3t", body); code != http.StatusAccepted {
			t.Fatalf("pull request from %s answered %d", c.headRepo, code)
		}
		r, updates := f.s.Wait(t, triggerRun(t, f.s, webhook.TriggerID(c.id)))
		lines := stageLines(updates)["check"]
		if r.State != wire.RunSucceeded || r.Stage("check").Agent != "agent-pr" || r.Pipeline.Stage("check").Queue != "pr" {
			t.Fatalf("pull request from %s: run %s on %s, queue %s; want succeeded on queue pr", c.headRepo, r.State, r.Stage("check").Agent, r.Pipeline.Stage("check").Queue)
		}
		if !slices.Contains(lines, c.want) || !slices.Contains(lines, sha) || r.Branch != "feature" {
			t.Errorf("pull request from %s printed %q on branch %s; want %q and the head commit", c.headRepo, lines, r.Branch, c.want)
		}
	}
}

// hookLog plays GitHub's record of a hook's deliveries: the list
// (GET .../hooks/ID/deliveries) and redelivery (POST
// .../deliveries/DID/attempts), which posts the delivery again to the
// bridge, as GitHub does, and records how that went.
type hookLog struct {
	mu      sync.Mutex
	entries []hookEntry // oldest first
	bridge  string
	asked   []string // GUIDs asked to redeliver
}

type hookEntry struct {
	ID         int64     `json:"id"`
	GUID       string    `json:"guid"`
	Delivered  time.Time `json:"delivered_at"`
	Redelivery bool      `json:"redelivery"`
	Status     string    `json:"status"`
	StatusCode int       `json:"status_code"`
	Event      string    `json:"event"`
	body       []byte
}

// record adds a delivery made at at with its outcome.
func (h *hookLog) record(guid, event string, body []byte, code int, at time.Time, redelivery bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	status := "OK"
	if code/100 != 2 {
		status = fmt.Sprintf("Invalid HTTP Response: %d", code)
	}
	h.entries = append(h.entries, hookEntry{ID: int64(len(h.entries) + 1), GUID: guid, Delivered: at, Redelivery: redelivery, Status: status, StatusCode: code, Event: event, body: body})
}

func (h *hookLog) serve(t *testing.T, w http.ResponseWriter, r *http.Request) bool {
	const prefix = "/repos/acme/app/hooks/77/deliveries"
	if !strings.HasPrefix(r.URL.Path, prefix) {
		return false
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == prefix:
		h.mu.Lock()
		list := slices.Clone(h.entries)
		h.mu.Unlock()
		slices.Reverse(list) // newest first, as GitHub lists them
		_ = json.NewEncoder(w).Encode(list)
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/attempts"):
		id, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimPrefix(r.URL.Path, prefix+"/"), "/attempts"), 10, 64)
		h.mu.Lock()
		var e *hookEntry
		for i := range h.entries {
			if h.entries[i].ID == id {
				e = &h.entries[i]
			}
		}
		h.mu.Unlock()
		if e == nil {
			http.NotFound(w, r)
			return true
		}
		h.mu.Lock()
		h.asked = append(h.asked, e.GUID)
		h.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
		guid, event, body := e.GUID, e.Event, e.body
		go func() {
			code, _ := postDelivery(h.bridge, event, guid, "s3cr3t", body) // 0 when it failed
			h.record(guid, event, body, code, time.Now(), true)
		}()
	default:
		http.NotFound(w, r)
	}
	return true
}

// postDelivery posts a signed delivery, as GitHub does, and returns the
// status code.
func postDelivery(url, event, id, secret string, body []byte) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-GitHub-Delivery", id)
	req.Header.Set("X-Hub-Signature-256", webhook.Sign(secret, body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// Deliveries that failed while the bridge was down are redelivered by a
// recovery pass and run once each; one that succeeded is not, and a
// second pass redelivers nothing.
func TestRecoveryRedeliversWhatFailedWhileTheBridgeWasDown(t *testing.T) {
	t.Parallel()
	repoDir, sha := gitRepo(t, map[string]string{".weft.yml": "name: app\nstages:\n  - key: s\n    commands: [echo ran]\n"})
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	f.agent(t, "agent-rec", "--queue", "main")
	hooks := &hookLog{}
	api := startFakeGitHub(t)
	api.hooks = func(w http.ResponseWriter, r *http.Request) bool { return hooks.serve(t, w, r) }
	url := startBridge(t, f, "acme/app", repoDir, api.srv.URL)
	hooks.bridge = url
	if res := RunWeft(t, weftBin, "", nil, "repo", "set", "acme/app", "--server", f.url, "--hook-id", "77"); res.Code != 0 {
		t.Fatalf("weft repo set --hook-id: %d %s", res.Code, res.Stderr)
	}
	body := githubPayload(t, "push.json", map[string]string{"__REPO__": "acme/app", "__SHA__": sha})
	// One delivery made it; three came while the bridge was down.
	okID := "0a000000-cc80-11e3-81ab-4c9367dc0958"
	hooks.record(okID, "push", body, deliver(t, url, "push", okID, "s3cr3t", body), time.Now().Add(-time.Hour), false)
	down := []string{"1a000000-cc80-11e3-81ab-4c9367dc0958", "2a000000-cc80-11e3-81ab-4c9367dc0958", "3a000000-cc80-11e3-81ab-4c9367dc0958"}
	for i, id := range down {
		hooks.record(id, "push", body, http.StatusBadGateway, time.Now().Add(-time.Duration(30-i)*time.Minute), false)
	}
	res := RunWeft(t, weftBin, "", nil, "webhook", "--recover", "--server", f.url)
	if res.Code != 0 || !strings.Contains(res.Stdout, "acme/app: 4 deliveries in the last 3 days, 3 redelivered") {
		t.Fatalf("weft webhook --recover: exit %d\n%s%s", res.Code, res.Stdout, res.Stderr)
	}
	ids := map[string]bool{}
	for _, id := range append([]string{okID}, down...) {
		ids[triggerRun(t, f.s, webhook.TriggerID(id))] = true
	}
	if len(ids) != 4 {
		t.Errorf("4 deliveries started %d distinct runs", len(ids))
	}
	for id := range ids {
		if r, _ := f.s.Wait(t, id); r.State != wire.RunSucceeded {
			t.Errorf("run %s %s", id, r.State)
		}
	}
	hooks.mu.Lock()
	asked := slices.Clone(hooks.asked)
	hooks.mu.Unlock()
	slices.Sort(asked)
	if !slices.Equal(asked, down) {
		t.Errorf("asked to redeliver %v, want only the failed %v", asked, down)
	}
	// Once the redeliveries are recorded, a second pass has nothing to do.
	if !Eventually(10*time.Second, func() bool {
		hooks.mu.Lock()
		defer hooks.mu.Unlock()
		return len(hooks.entries) == 7
	}) {
		t.Fatal("the redeliveries were never recorded")
	}
	res = RunWeft(t, weftBin, "", nil, "webhook", "--recover", "--server", f.url)
	if res.Code != 0 || !strings.Contains(res.Stdout, "4 deliveries in the last 3 days, 0 redelivered") {
		t.Errorf("a second pass: exit %d\n%s%s", res.Code, res.Stdout, res.Stderr)
	}
	runs, _ := f.s.Bus.JS.KeyValue(context.Background(), subjects.RunsBucket)
	if keys, _ := runs.Keys(context.Background()); len(keys) != 4 {
		t.Errorf("%d runs, want 4: each delivery once", len(keys))
	}
}

// weft repo manages settings (the secrets never shown, bad ones refused
// naming the field), and a repository's WIP limit holds its second run
// back while the first runs.
func TestWeftRepoSettingsAndTheirWIPLimit(t *testing.T) {
	t.Parallel()
	g := newGate(t)
	repoDir, sha := gitRepo(t, map[string]string{".weft.yml": "name: app\nstages:\n  - key: s\n    commands: ['while [ ! -f " + string(g) + " ]; do sleep 0.02; done']\n"})
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url, "--wip", "5")
	f.agent(t, "agent-wip", "--queue", "main", "--slots", "2")
	url := startBridge(t, f, "acme/app", repoDir, startFakeGitHub(t).srv.URL)

	res := RunWeft(t, weftBin, "", nil, "repo", "add", "acme/bad", "--server", f.url, "--clone-url", "ftp://x", "--secret-file", "/dev/null")
	if res.Code != 2 {
		t.Errorf("weft repo add with an empty secret: exit %d: %s", res.Code, res.Stderr)
	}
	secret := filepath.Join(t.TempDir(), "s")
	if err := os.WriteFile(secret, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	res = RunWeft(t, weftBin, "", nil, "repo", "add", "acme/bad", "--server", f.url, "--clone-url", "ftp://x", "--secret-file", secret)
	if res.Code != 2 || !strings.Contains(res.Stderr, `clone URL "ftp://x"`) {
		t.Errorf("weft repo add with an ftp clone URL: exit %d: %s", res.Code, res.Stderr)
	}
	if res := RunWeft(t, weftBin, "", nil, "repo", "set", "acme/app", "--server", f.url, "--wip", "1"); res.Code != 0 {
		t.Fatalf("weft repo set --wip: %d %s", res.Code, res.Stderr)
	}
	res = RunWeft(t, weftBin, "", nil, "repo", "ls", "--server", f.url, "--json")
	if res.Code != 0 || !strings.Contains(res.Stdout, `"name":"acme/app"`) || strings.Contains(res.Stdout, "s3cr3t") || strings.Contains(res.Stdout, "gh-token") {
		t.Errorf("weft repo ls --json: exit %d: %s", res.Code, res.Stdout)
	}

	body := githubPayload(t, "push.json", map[string]string{"__REPO__": "acme/app", "__SHA__": sha})
	first, second := "5a000000-cc81-11e3-81ab-4c9367dc0958", "6a000000-cc81-11e3-81ab-4c9367dc0958"
	deliver(t, url, "push", first, "s3cr3t", body)
	a := triggerRun(t, f.s, webhook.TriggerID(first))
	waitFor(t, f.s, a, "running", func(r *wire.Run) bool { return r.Stage("s").State == wire.StageRunning })
	deliver(t, url, "push", second, "s3cr3t", body)
	b := triggerRun(t, f.s, webhook.TriggerID(second))
	waitFor(t, f.s, b, "waiting for the WIP limit", func(r *wire.Run) bool { return r.Pending != nil && r.Pending.Reason == wire.PendingWIP })
	g.open(t)
	for _, id := range []string{a, b} {
		if r, _ := f.s.Wait(t, id); r.State != wire.RunSucceeded {
			t.Errorf("run %s %s", id, r.State)
		}
	}
	if res := RunWeft(t, weftBin, "", nil, "repo", "rm", "acme/app", "--server", f.url); res.Code != 0 {
		t.Errorf("weft repo rm: %d %s", res.Code, res.Stderr)
	}
	if code := deliver(t, url, "push", "7a000000-cc81-11e3-81ab-4c9367dc0958", "s3cr3t", body); code != http.StatusNotFound {
		t.Errorf("a delivery for a removed repository answered %d, want 404", code)
	}
	if res := RunWeft(t, weftBin, "", nil, "repo", "rm", "acme/app", "--server", f.url); res.Code != 2 {
		t.Errorf("weft repo rm of a removed repository: exit %d", res.Code)
	}
}
