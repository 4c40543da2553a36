package webhook_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/test"
	"github.com/weft-ci/weft/webhook"
	"github.com/weft-ci/weft/wire"
)

const (
	testRepo   = "acme/app"
	testSecret = "It's a Secret to Everybody"
	testSHA    = "7b3f2d9e4c1a5b6d8e0f1a2b3c4d5e6f7a8b9c0d"
)

// payload reads a testdata payload with its placeholders filled.
func payload(t testing.TB, name string, fill map[string]string) []byte {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	base := map[string]string{"__REPO__": testRepo, "__SHA__": testSHA, "__HEAD_REPO__": testRepo, "__HEAD_OWNER__": "acme", "__FORK__": "false"}
	for k, v := range fill {
		base[k] = v
	}
	s := string(data)
	for k, v := range base {
		s = strings.ReplaceAll(s, k, v)
	}
	return []byte(s)
}

// server is a handler on a fresh bus with acme/app's settings.
type server struct {
	h  http.Handler
	js jetstream.JetStream
}

func newServer(t testing.TB) *server {
	t.Helper()
	return newServerLogging(t, test.Logger(t))
}

// newServerLogging is newServer with a logger: a fuzz target may not log
// to its F.
func newServerLogging(t testing.TB, log zerolog.Logger) *server {
	t.Helper()
	b := test.Bus(t)
	ctx := context.Background()
	rs, err := repos.Open(ctx, b.JS)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Put(ctx, &repos.Repo{Name: testRepo, CloneURL: "file:///nowhere", Secret: testSecret}); err != nil {
		t.Fatal(err)
	}
	// A repository registered for API runs alone has no secret.
	if err := rs.Put(ctx, &repos.Repo{Name: "acme/nosecret", CloneURL: "file:///nowhere"}); err != nil {
		t.Fatal(err)
	}
	return &server{h: webhook.NewHandler(b.JS, rs, log), js: b.JS}
}

// post posts body as a delivery of event; sig "" signs it with the
// repository's secret, "-" sends no signature.
func (s *server) post(t testing.TB, event, id string, body []byte, sig string) (int, map[string]string) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/webhook", bytes.NewReader(body))
	r.Header.Set("X-GitHub-Event", event)
	r.Header.Set("X-GitHub-Delivery", id)
	r.Header.Set("Content-Type", "application/json")
	switch sig {
	case "":
		r.Header.Set("X-Hub-Signature-256", webhook.Sign(testSecret, body))
	case "-":
	default:
		r.Header.Set("X-Hub-Signature-256", sig)
	}
	w := httptest.NewRecorder()
	s.h.ServeHTTP(w, r)
	var a map[string]string
	_ = json.Unmarshal(w.Body.Bytes(), &a)
	return w.Code, a
}

// stored returns the deliveries the stream holds.
func (s *server) stored(t testing.TB) uint64 {
	t.Helper()
	st, err := s.js.Stream(context.Background(), subjects.DeliveriesStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// Every delivery weft must refuse gets its status code and publishes
// nothing.
func TestBadDeliveriesAreRefusedAndPublishNothing(t *testing.T) {
	s := newServer(t)
	push := payload(t, "push.json", nil)
	other := payload(t, "push.json", map[string]string{"__REPO__": "stranger/repo"})
	unsigned := payload(t, "push.json", map[string]string{"__REPO__": "acme/nosecret"})
	huge := append(bytes.Repeat([]byte(" "), webhook.MaxBody), push...)
	tests := []struct {
		name, event string
		body        []byte
		sig         string
		code        int
		status      string
	}{
		{"bad signature", "push", push, webhook.Sign("another secret", push), http.StatusUnauthorized, "refused"},
		{"signature of another body", "push", push, webhook.Sign(testSecret, []byte("{}")), http.StatusUnauthorized, "refused"},
		{"no signature", "push", push, "-", http.StatusUnauthorized, "refused"},
		{"a repository without a secret", "push", unsigned, webhook.Sign("", unsigned), http.StatusUnauthorized, "refused"},
		{"oversized body", "push", huge, "", http.StatusRequestEntityTooLarge, "refused"},
		{"malformed JSON", "push", []byte(`{"ref": "refs/heads/main", "repository": {`), "", http.StatusBadRequest, "refused"},
		{"JSON without a repository", "push", []byte(`{"ref": "refs/heads/main"}`), "", http.StatusBadRequest, "refused"},
		{"unknown repository", "push", other, "", http.StatusNotFound, "refused"},
		{"unsupported event", "issues", push, "", http.StatusAccepted, "ignored"},
		{"unsupported action", "pull_request", payload(t, "pull_request.json", map[string]string{`"action": "opened"`: `"action": "closed"`}), "", http.StatusAccepted, "ignored"},
		{"deleted branch", "push", payload(t, "push.json", map[string]string{`"deleted": false`: `"deleted": true`, `"after": "__SHA__"`: `"after": "0000000000000000000000000000000000000000"`}), "", http.StatusAccepted, "ignored"},
		{"ping", "ping", payload(t, "ping.json", nil), "", http.StatusOK, "pong"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, a := s.post(t, tt.event, "delivery-"+strings.ReplaceAll(tt.name, " ", "-"), tt.body, tt.sig)
			if code != tt.code || a["status"] != tt.status {
				t.Errorf("%s: %d %v, want %d %s", tt.name, code, a, tt.code, tt.status)
			}
			if n := s.stored(t); n != 0 {
				t.Errorf("after case %d (%s) the deliveries stream holds %d messages, want 0", i, tt.name, n)
			}
		})
	}
}

// A push and a pull request are stored as deliveries; the same delivery
// posted three times is stored once.
func TestDeliveriesAreStoredOnce(t *testing.T) {
	s := newServer(t)
	push := payload(t, "push.json", nil)
	codes := []int{}
	for range 3 {
		code, _ := s.post(t, "push", "3f1e9a70-0000-11ef-8b6c-1a2b3c4d5e6f", push, "")
		codes = append(codes, code)
	}
	if codes[0] != http.StatusAccepted || codes[1] != http.StatusOK || codes[2] != http.StatusOK {
		t.Errorf("three posts of one delivery answered %v, want 202 then 200, 200", codes)
	}
	fork := payload(t, "pull_request.json", map[string]string{"__HEAD_REPO__": "contributor/app", "__HEAD_OWNER__": "contributor", "__FORK__": "true"})
	if code, a := s.post(t, "pull_request", "4a2b9a70-0000-11ef-8b6c-1a2b3c4d5e6f", fork, ""); code != http.StatusAccepted {
		t.Fatalf("pull request: %d %v", code, a)
	}
	if n := s.stored(t); n != 2 {
		t.Fatalf("the deliveries stream holds %d messages, want 2", n)
	}
	st, _ := s.js.Stream(context.Background(), subjects.DeliveriesStream)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var got []wire.Delivery
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var d wire.Delivery
		if err := json.Unmarshal(m.Data, &d); err != nil {
			t.Fatal(err)
		}
		got = append(got, d)
	}
	if d := got[0]; d.Kind != repos.KindDefaultBranch || d.Branch != "main" || d.Commit != testSHA || d.Repo != testRepo {
		t.Errorf("push delivery %+v", d)
	}
	if d := got[1]; d.Kind != repos.KindPullRequest || !d.Fork || d.PullRequest != 7 || d.Branch != "feature" || d.Commit != testSHA {
		t.Errorf("fork pull request delivery %+v", d)
	}
}

// FuzzHandler posts arbitrary bodies and events, signed or not: the
// handler never panics, answers one of its documented codes, and stores
// only what it accepted.
func FuzzHandler(f *testing.F) {
	for _, name := range []string{"push.json", "pull_request.json", "ping.json"} {
		data, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(strings.TrimSuffix(name, ".json"), data, true)
	}
	f.Add("push", []byte(`{"repository":{"full_name":"acme/app"},"after":"zz"}`), true)
	f.Add("pull_request", []byte(`{"repository":{"full_name":"acme/app"},"action":"opened","pull_request":{"head":{"repo":null}}}`), true)
	f.Add("push", []byte(`not json`), false)
	s := newServerLogging(f, zerolog.Nop())
	f.Fuzz(func(t *testing.T, event string, body []byte, signed bool) {
		if event == "" {
			event = "push"
		}
		for k, v := range map[string]string{"__REPO__": testRepo, "__SHA__": testSHA, "__HEAD_REPO__": testRepo, "__HEAD_OWNER__": "acme", "__FORK__": "false"} {
			body = bytes.ReplaceAll(body, []byte(k), []byte(v))
		}
		before := s.stored(t)
		sig := "-"
		if signed {
			sig = ""
		}
		code, a := s.post(t, event, "fuzz-"+event, body, sig)
		switch code {
		case http.StatusOK, http.StatusAccepted, http.StatusBadRequest, http.StatusUnauthorized, http.StatusNotFound, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("answer %d %v", code, a)
		}
		if after := s.stored(t); after != before && a["status"] != "accepted" {
			t.Fatalf("answered %d %v and stored a delivery", code, a)
		}
	})
}
