package test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/api"
	"github.com/weft-ci/weft/dispatcher"
	"github.com/weft-ci/weft/gitsrc"
	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/tokens"
	"github.com/weft-ci/weft/wire"
)

// apiServer is the HTTP API on a stack, with a token of each role.
type apiServer struct {
	url    string
	s      *Stack
	repos  *repos.Store
	tokens map[tokens.Role]string
	// doc is the OpenAPI document, for checking answers against it.
	doc openAPIDoc
}

func startAPI(t *testing.T, s *Stack) *apiServer {
	t.Helper()
	ctx := context.Background()
	ts, err := tokens.Open(ctx, s.Bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := repos.Open(ctx, s.Bus.JS)
	if err != nil {
		t.Fatal(err)
	}
	a := &apiServer{s: s, repos: rs, tokens: map[tokens.Role]string{}}
	for _, role := range tokens.Roles {
		secret, _, err := ts.Create(ctx, "test-"+string(role), role)
		if err != nil {
			t.Fatal(err)
		}
		a.tokens[role] = secret
	}
	var handler http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { handler.ServeHTTP(w, r) }))
	t.Cleanup(srv.Close)
	h, err := api.New(api.Config{JS: s.Bus.JS, Tokens: ts, Repos: rs, Git: gitsrc.New(t.TempDir()), BaseURL: srv.URL, Logger: Logger(t), SubmitTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	handler = h.Handler()
	a.url = srv.URL
	if err := json.Unmarshal(api.OpenAPI, &a.doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return a
}

// answer is an API response.
type answer struct {
	code   int
	header http.Header
	body   map[string]any
	raw    string
}

// call makes a request with the token of role ("" for none) and checks
// that the OpenAPI document lists its status code for the operation
// (pattern is its path as the document has it).
func (a *apiServer) call(t *testing.T, role tokens.Role, method, pattern, path string, body any, header ...string) answer {
	t.Helper()
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, a.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if role != "" {
		req.Header.Set("Authorization", "Bearer "+a.tokens[role])
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	ans := answer{code: resp.StatusCode, header: resp.Header, raw: string(data)}
	_ = json.Unmarshal(data, &ans.body)
	if !a.doc.documents(method, pattern, resp.StatusCode) {
		t.Errorf("%s %s answered %d, which openapi.json does not list for %s %s", method, path, resp.StatusCode, method, pattern)
	}
	return ans
}

// openAPIDoc is the part of an OpenAPI document the tests read.
type openAPIDoc struct {
	Paths map[string]map[string]struct {
		Role      string         `json:"x-weft-role"`
		Responses map[string]any `json:"responses"`
	} `json:"paths"`
}

func (d openAPIDoc) documents(method, pattern string, code int) bool {
	op, ok := d.Paths[pattern][strings.ToLower(method)]
	if !ok {
		return false
	}
	_, ok = op.Responses[strconv.Itoa(code)]
	return ok
}

// registerRepo registers a repository holding a pipeline file, with a WIP
// limit; it returns the pipeline's id as the API's paths take it.
func (a *apiServer) registerRepo(t *testing.T, name, file, text string, wip int) string {
	t.Helper()
	dir, _ := gitRepo(t, map[string]string{file: text})
	if err := a.repos.Put(context.Background(), &repos.Repo{Name: name, CloneURL: "file://" + dir, Pipeline: file, WIP: wip}); err != nil {
		t.Fatal(err)
	}
	return url.PathEscape(name)
}

// triggers returns how many triggers the triggers stream ever took.
func triggers(t *testing.T, s *Stack) uint64 {
	t.Helper()
	st, err := s.Bus.JS.Stream(context.Background(), subjects.TriggersStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// Must-show 2 of issue 14: every error path of the API answers its code
// with a message that names the problem, changes nothing, and is listed
// in the OpenAPI document.
func TestTheAPIsErrorPaths(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Queues: []string{"main"}, Dispatcher: dispatcher.Config{WIPLimit: 1, WIPPolicy: dispatcher.PolicyRefuse, RetryAfter: 7 * time.Second}})
	a := startAPI(t, s)
	g := newGate(t)
	good := a.registerRepo(t, "acme/app", ".weft.yml", g.pipeline("app", ""), 1)
	bad := a.registerRepo(t, "acme/broken", ".weft.yml", "name: broken\nstages:\n  - key: build\n    comands: [make]\n", 0)
	const runs = "/api/pipelines/{id}/runs"

	t.Run("401 without a token or with an unknown one", func(t *testing.T) {
		if ans := a.call(t, "", "GET", "/api/runs", "/api/runs", nil); ans.code != 401 || !strings.Contains(ans.body["error"].(string), "Bearer") {
			t.Errorf("no token: %d %s", ans.code, ans.raw)
		}
		ans := a.call(t, "", "GET", "/api/runs", "/api/runs", nil, "Authorization", "Bearer weft_notatoken")
		if ans.code != 401 || !strings.Contains(ans.raw, "revoked or never made") {
			t.Errorf("unknown token: %d %s", ans.code, ans.raw)
		}
	})
	t.Run("403 for a viewer's change", func(t *testing.T) {
		before := triggers(t, s)
		ans := a.call(t, tokens.Viewer, "POST", runs, "/api/pipelines/"+good+"/runs", nil)
		if ans.code != 403 || !strings.Contains(ans.raw, "role viewer") || !strings.Contains(ans.raw, "needs operator") {
			t.Errorf("viewer trigger: %d %s", ans.code, ans.raw)
		}
		if n := triggers(t, s); n != before {
			t.Errorf("a refused trigger was published: %d triggers, had %d", n, before)
		}
	})
	t.Run("404 for an unknown pipeline and run", func(t *testing.T) {
		if ans := a.call(t, tokens.Operator, "POST", runs, "/api/pipelines/"+url.PathEscape("acme/nope")+"/runs", nil); ans.code != 404 || !strings.Contains(ans.raw, "acme/nope") {
			t.Errorf("unknown pipeline: %d %s", ans.code, ans.raw)
		}
		if ans := a.call(t, tokens.Viewer, "GET", "/api/runs/{id}", "/api/runs/01NOSUCHRUN0000000000000000", nil); ans.code != 404 {
			t.Errorf("unknown run: %d %s", ans.code, ans.raw)
		}
	})
	t.Run("400 with the file's line for an invalid pipeline, nothing published", func(t *testing.T) {
		before := triggers(t, s)
		ans := a.call(t, tokens.Operator, "POST", runs, "/api/pipelines/"+bad+"/runs", nil)
		errs, _ := ans.body["errors"].([]any)
		named := slices.ContainsFunc(errs, func(e any) bool {
			return strings.HasPrefix(e.(string), ".weft.yml:4:5: stages[0].comands: unknown field")
		})
		if ans.code != 400 || !named {
			t.Errorf("invalid pipeline: %d %s; want 400 naming .weft.yml:4:5", ans.code, ans.raw)
		}
		if n := triggers(t, s); n != before {
			t.Errorf("an invalid pipeline was published: %d triggers, had %d", n, before)
		}
		for name, body := range map[string]any{
			"bad priority":  map[string]string{"priority": "urgent"},
			"unknown field": map[string]string{"brnch": "main"},
			"bad branch":    map[string]string{"branch": "no-such-branch"},
			"bad commit":    map[string]string{"commit": "1234"},
		} {
			if ans := a.call(t, tokens.Operator, "POST", runs, "/api/pipelines/"+good+"/runs", body); ans.code != 400 {
				t.Errorf("%s: %d %s, want 400", name, ans.code, ans.raw)
			}
		}
		if n := triggers(t, s); n != before {
			t.Errorf("bad requests published triggers: %d, had %d", n, before)
		}
	})
	var first string
	t.Run("201, then 200 with the first run for a duplicate", func(t *testing.T) {
		ans := a.call(t, tokens.Operator, "POST", runs, "/api/pipelines/"+good+"/runs", map[string]any{"variables": map[string]string{"N": "1"}})
		if ans.code != 201 || ans.body["run_id"] == nil || !strings.HasSuffix(ans.body["web_url"].(string), "/runs/"+ans.body["run_id"].(string)) {
			t.Fatalf("trigger: %d %s", ans.code, ans.raw)
		}
		first = ans.body["run_id"].(string)
		again := a.call(t, tokens.Operator, "POST", runs, "/api/pipelines/"+good+"/runs", map[string]any{"variables": map[string]string{"N": "1"}})
		if again.code != 200 || again.body["run_id"] != first || again.body["duplicate"] != true {
			t.Errorf("duplicate: %d %s, want 200 with run %s", again.code, again.raw, first)
		}
	})
	t.Run("429 with Retry-After, reason and queue depth over the WIP limit", func(t *testing.T) {
		waitFor(t, s, first, "the first run admitted", func(r *wire.Run) bool { return r.Lease != "" })
		ans := a.call(t, tokens.Operator, "POST", runs, "/api/pipelines/"+good+"/runs", map[string]any{"variables": map[string]string{"N": "2"}})
		if ans.code != 429 || ans.header.Get("Retry-After") != "7" || ans.body["reason"] != "wip" || ans.body["queue_depth"] == nil || !strings.Contains(ans.raw, "wip limit") {
			t.Errorf("over the WIP limit: %d (Retry-After %q) %s", ans.code, ans.header.Get("Retry-After"), ans.raw)
		}
	})
	g.open(t)
	if r, _ := s.Wait(t, first); r.State != "succeeded" {
		t.Errorf("run %s %s", first, r.State)
	}
	t.Run("cancel of an ended run is 409", func(t *testing.T) {
		if ans := a.call(t, tokens.Operator, "POST", "/api/runs/{id}/cancel", "/api/runs/"+first+"/cancel", nil); ans.code != 409 {
			t.Errorf("cancel ended run: %d %s", ans.code, ans.raw)
		}
	})
	t.Run("retry, priority and bulk refuse what they cannot do", func(t *testing.T) {
		before := lastSeq(t, s.Bus.JS, subjects.EventsStream)
		if ans := a.call(t, tokens.Operator, "POST", "/api/runs/{id}/retry", "/api/runs/"+first+"/retry", nil); ans.code != 409 || !strings.Contains(ans.raw, "only a failed or cancelled run") {
			t.Errorf("retry of a succeeded run: %d %s", ans.code, ans.raw)
		}
		if ans := a.call(t, tokens.Viewer, "POST", "/api/runs/{id}/retry", "/api/runs/"+first+"/retry", nil); ans.code != 403 {
			t.Errorf("a viewer's retry: %d %s", ans.code, ans.raw)
		}
		if ans := a.call(t, tokens.Operator, "POST", "/api/runs/{id}/priority", "/api/runs/"+first+"/priority", map[string]string{"tier": "urgent"}); ans.code != 400 || !strings.Contains(ans.raw, "urgent") {
			t.Errorf("priority urgent: %d %s", ans.code, ans.raw)
		}
		if ans := a.call(t, tokens.Operator, "POST", "/api/runs/{id}/priority", "/api/runs/"+first+"/priority", map[string]string{"tier": "low"}); ans.code != 409 {
			t.Errorf("priority of an ended run: %d %s", ans.code, ans.raw)
		}
		if ans := a.call(t, tokens.Operator, "POST", "/api/bulk/{action}", "/api/bulk/explode", map[string]any{}); ans.code != 400 || !strings.Contains(ans.raw, "explode") {
			t.Errorf("bulk explode: %d %s", ans.code, ans.raw)
		}
		if ans := a.call(t, tokens.Operator, "POST", "/api/bulk/{action}", "/api/bulk/requeue", map[string]any{"states": []string{"running"}}); ans.code != 400 || !strings.Contains(ans.raw, "requeue applies to") {
			t.Errorf("bulk requeue of running runs: %d %s", ans.code, ans.raw)
		}
		dry := a.call(t, tokens.Operator, "POST", "/api/bulk/{action}", "/api/bulk/cancel", map[string]any{"repo": "acme/app", "states": []string{"succeeded"}, "dry_run": true})
		if dry.code != 400 {
			t.Errorf("bulk cancel of succeeded runs: %d %s", dry.code, dry.raw)
		}
		if after := lastSeq(t, s.Bus.JS, subjects.EventsStream); after != before {
			t.Errorf("refused requests published %d events", after-before)
		}
	})
}

// Every operation the API serves is in the OpenAPI document, and the
// document has no operation the API does not serve.
func TestTheOpenAPIDocumentMatchesTheHandlers(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true, NoDispatcher: true})
	a := startAPI(t, s)
	h, err := api.New(api.Config{JS: s.Bus.JS, Tokens: &tokens.Store{}, Repos: &repos.Store{}, Git: gitsrc.New(t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	var served, documented []string
	for _, op := range h.Operations() {
		served = append(served, op.Method+" "+op.Path+" needs "+string(op.Role))
	}
	for path, ops := range a.doc.Paths {
		for method, op := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path+" needs "+op.Role)
		}
	}
	slices.Sort(served)
	slices.Sort(documented)
	if !slices.Equal(served, documented) {
		t.Errorf("served:\n  %s\ndocumented:\n  %s", strings.Join(served, "\n  "), strings.Join(documented, "\n  "))
	}
	for _, op := range h.Operations() {
		if op.Role == "" {
			continue
		}
		for _, code := range []int{401, 403} {
			if !a.doc.documents(op.Method, op.Path, code) {
				t.Errorf("%s %s needs a token and lists no %d answer", op.Method, op.Path, code)
			}
		}
		if op.Method == "GET" && !a.doc.documents(op.Method, op.Path, 200) {
			t.Errorf("%s %s lists no 200 answer", op.Method, op.Path)
		}
	}
	// The document served is the file.
	ans := a.call(t, "", "GET", "/api/openapi.json", "/api/openapi.json", nil)
	if ans.code != 200 || ans.raw != string(api.OpenAPI) {
		t.Errorf("GET /api/openapi.json: %d, %d bytes", ans.code, len(ans.raw))
	}
}

// sseEvent is one Server-Sent Event.
type sseEvent struct{ id, event, data string }

// readSSE reads events from r until one of type stop (or the end),
// calling each for every event; it returns them all.
func readSSE(t *testing.T, r io.Reader, stop string, each func(sseEvent) bool) []sseEvent {
	t.Helper()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	var out []sseEvent
	var ev sseEvent
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.event != "" {
				out = append(out, ev)
				if ev.event == stop || (each != nil && !each(ev)) {
					return out
				}
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			ev.data = line[6:]
		}
	}
	return out
}

// GET /api/runs lists runs newest first, a page at a time: the cursor of
// one page starts the next after it, and filters select by repository
// and state.
func TestTheRunsListPagesNewestFirst(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Queues: []string{"main"}})
	a := startAPI(t, s)
	page := a.registerRepo(t, "acme/page", ".weft.yml", "name: page\nstages:\n  - key: s\n    commands: [true]\n", 3)
	var ids []string
	for i := range 3 {
		ans := a.call(t, tokens.Operator, "POST", "/api/pipelines/{id}/runs", "/api/pipelines/"+page+"/runs", map[string]any{"variables": map[string]string{"N": fmt.Sprint(i)}})
		if ans.code != 201 {
			t.Fatalf("trigger %d: %d %s", i, ans.code, ans.raw)
		}
		id := ans.body["run_id"].(string)
		s.Wait(t, id)
		ids = append(ids, id)
	}
	list := func(query string) (got []string, next string) {
		t.Helper()
		ans := a.call(t, tokens.Viewer, "GET", "/api/runs", "/api/runs?"+query, nil)
		if ans.code != 200 {
			t.Fatalf("GET /api/runs?%s: %d %s", query, ans.code, ans.raw)
		}
		for _, r := range ans.body["runs"].([]any) {
			got = append(got, r.(map[string]any)["id"].(string))
		}
		next, _ = ans.body["next"].(string)
		return got, next
	}
	first, next := list("repo=acme/page&limit=2")
	if want := []string{ids[2], ids[1]}; !slices.Equal(first, want) || next != ids[1] {
		t.Fatalf("first page %v next %q, want %v next %q", first, next, want, ids[1])
	}
	if rest, next := list("repo=acme/page&limit=2&cursor=" + next); !slices.Equal(rest, []string{ids[0]}) || next != "" {
		t.Fatalf("second page %v next %q, want [%s] and no next", rest, next, ids[0])
	}
	if failed, _ := list("repo=acme/page&state=failed"); len(failed) != 0 {
		t.Fatalf("failed runs of acme/page: %v, want none", failed)
	}
	if other, _ := list("repo=acme/other"); len(other) != 0 {
		t.Fatalf("runs of acme/other: %v, want none", other)
	}
}
