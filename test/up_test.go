package test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// upStack is a weft up process: its HTTP URL, NATS URL and admin token.
type upStack struct {
	p                *proc
	url, nats, token string
	state            string
}

// startUp starts weft up on free loopback ports with args added.
func startUp(t *testing.T, args ...string) *upStack {
	t.Helper()
	state := t.TempDir()
	p := startWeft(t, nil, append([]string{"up", "--state", state, "--listen", "127.0.0.1:0", "--nats-listen", "127.0.0.1:0"}, args...)...)
	field := func(prefix string) string {
		line := p.waitLine(t, &p.stdout, 60*time.Second, prefix, func(l string) bool { return strings.HasPrefix(strings.TrimSpace(l), prefix) })
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), prefix))
		return f[0]
	}
	u := &upStack{p: p, state: state}
	u.url = field("weft up:")
	u.nats = field("nats:")
	u.token = field("admin token:")
	return u
}

// do makes an API request with the admin token.
func (u *upStack) do(t *testing.T, method, path string, body any) (*http.Response, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		data, _ := json.Marshal(body)
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, u.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+u.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, data
}

// Must-show 1 of issue 14: weft up on this machine; a pipeline registered
// with weft repo add, triggered through the API with a variable, its logs
// followed over Server-Sent Events to the end, and the run read.
func TestWeftUpRunsAPipelineFromTheAPI(t *testing.T) {
	t.Parallel()
	dir, commit := gitRepo(t, map[string]string{".weft.yml": `name: hello
stages:
  - key: build
    commands: ['echo "building $GREETING at $(git rev-parse HEAD)"', 'for i in 1 2 3; do echo "step $i"; sleep 0.2; done']
  - key: test
    depends_on: [build]
    commands: ['echo tested']
`})
	u := startUp(t, "--agents", "1", "--slots", "2")
	if out := RunWeft(t, weftBin, dir, nil, "repo", "add", "--server", u.nats, "--clone-url", "file://"+dir, "demo/hello"); out.Code != 0 {
		t.Fatalf("weft repo add: %d\n%s", out.Code, out.Stderr)
	}
	resp, data := u.do(t, "POST", "/api/pipelines/"+url.PathEscape("demo/hello")+"/runs", map[string]any{"variables": map[string]string{"GREETING": "hello from the API"}})
	var created struct {
		RunID  string `json:"run_id"`
		WebURL string `json:"web_url"`
	}
	if err := json.Unmarshal(data, &created); err != nil || resp.StatusCode != 201 || created.RunID == "" {
		t.Fatalf("trigger: %d %s", resp.StatusCode, data)
	}
	if loc := resp.Header.Get("Location"); loc != "/api/runs/"+created.RunID {
		t.Errorf("Location %q", loc)
	}

	// Follow the logs; drop the connection after the second line, and
	// resume from it with Last-Event-ID.
	logs := func(last string) *http.Response {
		req, _ := http.NewRequest("GET", u.url+"/api/runs/"+created.RunID+"/logs?follow=true", nil)
		req.Header.Set("Authorization", "Bearer "+u.token)
		if last != "" {
			req.Header.Set("Last-Event-ID", last)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("logs: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		return resp
	}
	first := logs("")
	n := 0
	head := readSSE(t, first.Body, "end", func(sseEvent) bool { n++; return n < 2 })
	first.Body.Close()
	if len(head) != 2 || head[1].id != "2" {
		t.Fatalf("first two events: %+v", head)
	}
	rest := logs(head[1].id)
	tail := readSSE(t, rest.Body, "end", nil)
	rest.Body.Close()
	all := append(head, tail...)
	var text []string
	for i, ev := range all[:len(all)-1] {
		if ev.event != "line" || ev.id != fmt.Sprint(i+1) {
			t.Errorf("event %d: %+v, want line %d", i, ev, i+1)
		}
		var l struct{ Stage, Text, Stream string }
		_ = json.Unmarshal([]byte(ev.data), &l)
		if l.Stream == "output" {
			text = append(text, l.Stage+": "+l.Text)
		}
	}
	want := []string{"build: building hello from the API at " + commit, "build: step 1", "build: step 2", "build: step 3", "test: tested"}
	if strings.Join(text, "\n") != strings.Join(want, "\n") {
		t.Errorf("output over SSE:\n%s\nwant:\n%s", strings.Join(text, "\n"), strings.Join(want, "\n"))
	}
	end := all[len(all)-1]
	if end.event != "end" || !strings.Contains(end.data, `"state":"succeeded"`) {
		t.Errorf("last event %+v, want end with the run succeeded", end)
	}

	resp, data = u.do(t, "GET", "/api/runs/"+created.RunID, nil)
	var run struct {
		State, Commit, Branch string
		Stages                []struct{ Key, State string }
	}
	if err := json.Unmarshal(data, &run); err != nil || resp.StatusCode != 200 || run.State != "succeeded" || run.Commit != commit || run.Branch != "main" || len(run.Stages) != 2 {
		t.Errorf("GET run: %d %s", resp.StatusCode, data)
	}
	resp, data = u.do(t, "GET", "/api/runs?repo=demo/hello&state=succeeded", nil)
	if resp.StatusCode != 200 || !strings.Contains(string(data), created.RunID) {
		t.Errorf("GET runs: %d %s", resp.StatusCode, data)
	}
	// The admin token is kept in the state directory.
	if out := RunWeft(t, weftBin, "", nil, "token", "ls", "--server", u.nats); out.Code != 0 || !strings.Contains(out.Stdout, "admin") {
		t.Errorf("weft token ls: %d %s %s", out.Code, out.Stdout, out.Stderr)
	}
	if data, err := os.ReadFile(filepath.Join(u.state, "admin.token")); err != nil || strings.TrimSpace(string(data)) != u.token {
		t.Errorf("admin.token holds %q, %v", data, err)
	}
}
