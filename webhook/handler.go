package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/subjects"
)

// MaxBody is the largest delivery the handler reads: GitHub never sends a
// payload over 25 MB.
const MaxBody = 25 << 20

// publishTimeout bounds the wait for a delivery's PubAck: GitHub waits
// 10 s for an answer.
const publishTimeout = 5 * time.Second

// Handler is the webhook endpoint GitHub posts deliveries to.
//
// It answers 405 to anything but POST; 400 without X-GitHub-Event or
// X-GitHub-Delivery, or with a body that is not JSON; 413 over MaxBody;
// 401 without a valid X-Hub-Signature-256 (HMAC-SHA256 of the body with
// the repository's secret, compared in constant time); 404 for a
// repository weft has no settings for; 200 to a ping; 202 "ignored" to an
// event or action weft does not build. A push or pull request it stores
// in the deliveries stream (Nats-Msg-Id: the delivery id, so the same
// delivery posted again is stored once) and answers 202 "accepted" once
// the server acknowledged it, or 200 "duplicate"; 503 when it could not.
// Nothing but an accepted delivery publishes anything.
type Handler struct {
	js    jetstream.JetStream
	repos *repos.Store
	log   zerolog.Logger
	now   func() time.Time
}

// NewHandler returns a handler publishing on js and reading settings from
// rs.
func NewHandler(js jetstream.JetStream, rs *repos.Store, log zerolog.Logger) *Handler {
	return &Handler{js: js, repos: rs, log: log.With().Str("component", "webhook").Logger(), now: time.Now}
}

// answer is the handler's JSON answer.
type answer struct {
	Status   string `json:"status"`
	Message  string `json:"message,omitempty"`
	Delivery string `json:"delivery,omitempty"`
}

func reply(w http.ResponseWriter, code int, a answer) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(a)
}

// ServeHTTP handles one delivery.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	code, a := h.handle(r)
	log := h.log.Info()
	if code >= 400 {
		log = h.log.Warn()
	}
	log.Int("code", code).Str("delivery", r.Header.Get("X-GitHub-Delivery")).Str("event", r.Header.Get("X-GitHub-Event")).
		Str("status", a.Status).Str("message", a.Message).Msg("webhook delivery")
	reply(w, code, a)
}

func (h *Handler) handle(r *http.Request) (int, answer) {
	if r.Method != http.MethodPost {
		return http.StatusMethodNotAllowed, answer{Status: "refused", Message: "POST a GitHub delivery"}
	}
	event, id := r.Header.Get("X-GitHub-Event"), r.Header.Get("X-GitHub-Delivery")
	if event == "" || id == "" || len(id) > 128 || strings.ContainsAny(id, " \t\r\n") {
		return http.StatusBadRequest, answer{Status: "refused", Message: "X-GitHub-Event and X-GitHub-Delivery are required"}
	}
	sig := r.Header.Get("X-Hub-Signature-256")
	if sig == "" {
		return http.StatusUnauthorized, answer{Status: "refused", Message: "no X-Hub-Signature-256"}
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, MaxBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return http.StatusRequestEntityTooLarge, answer{Status: "refused", Message: fmt.Sprintf("body over %d bytes", MaxBody)}
	}
	if err != nil {
		return http.StatusBadRequest, answer{Status: "refused", Message: "read body: " + err.Error()}
	}
	name, err := repoOf(body)
	if err != nil {
		return http.StatusBadRequest, answer{Status: "refused", Message: err.Error()}
	}
	ctx, cancel := context.WithTimeout(r.Context(), publishTimeout)
	defer cancel()
	repo, err := h.repos.Get(ctx, name)
	if errors.Is(err, repos.ErrNotFound) {
		return http.StatusNotFound, answer{Status: "refused", Message: "no repository " + name + " (weft repo add)"}
	}
	if err != nil {
		return http.StatusServiceUnavailable, answer{Status: "error", Message: "repository settings unreadable"}
	}
	if !Valid(repo.Secret, body, sig) {
		return http.StatusUnauthorized, answer{Status: "refused", Message: "bad X-Hub-Signature-256"}
	}
	if event == "ping" {
		return http.StatusOK, answer{Status: "pong", Delivery: id}
	}
	d, err := parse(event, id, body)
	switch {
	case errors.Is(err, errIgnored):
		return http.StatusAccepted, answer{Status: "ignored", Message: err.Error(), Delivery: id}
	case err != nil:
		return http.StatusBadRequest, answer{Status: "refused", Message: err.Error(), Delivery: id}
	}
	d.Time = h.now()
	data, _ := json.Marshal(d)
	ack, err := h.js.Publish(ctx, subjects.Delivery(d.Repo), data, jetstream.WithMsgID(id))
	if err != nil {
		return http.StatusServiceUnavailable, answer{Status: "error", Message: "could not store the delivery; GitHub may redeliver it", Delivery: id}
	}
	if ack.Duplicate {
		return http.StatusOK, answer{Status: "duplicate", Delivery: id}
	}
	return http.StatusAccepted, answer{Status: "accepted", Delivery: id}
}

// Sign returns the X-Hub-Signature-256 of body under secret.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Valid reports whether sig is body's signature under secret, comparing
// in constant time. An empty secret validates nothing: a repository
// without one takes no deliveries.
func Valid(secret string, body []byte, sig string) bool {
	return secret != "" && hmac.Equal([]byte(Sign(secret, body)), []byte(sig))
}
