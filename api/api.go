package api

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/gitsrc"
	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/tokens"
)

// OpenAPI is the API's OpenAPI 3 document, served at /api/openapi.json.
//
//go:embed openapi.json
var OpenAPI []byte

// ErrInvalidConfig is wrapped by New's errors.
var ErrInvalidConfig = errors.New("api: invalid configuration")

// Config configures the API.
type Config struct {
	// JS is the fleet's JetStream.
	JS jetstream.JetStream
	// Tokens verifies bearer tokens.
	Tokens *tokens.Store
	// Repos holds the registered pipelines (repository settings).
	Repos *repos.Store
	// Git reads pipeline files at a commit.
	Git *gitsrc.Fetcher
	// BaseURL is where the API and the UI are reached from outside,
	// http://host:port with no path; it starts the web URLs of runs.
	BaseURL string
	// SubmitTimeout bounds how long a trigger waits for a dispatcher to
	// take it; default 30 s.
	SubmitTimeout time.Duration
	// Logger receives request errors.
	Logger zerolog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// API serves weft's HTTP API. Make it with New; Handler serves it.
type API struct {
	cfg Config
	log zerolog.Logger
}

// New returns the API of cfg. It starts nothing.
func New(cfg Config) (*API, error) {
	if cfg.JS == nil || cfg.Tokens == nil || cfg.Repos == nil || cfg.Git == nil {
		return nil, fmt.Errorf("%w: JS, Tokens, Repos and Git are required", ErrInvalidConfig)
	}
	if cfg.SubmitTimeout == 0 {
		cfg.SubmitTimeout = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	return &API{cfg: cfg, log: cfg.Logger.With().Str("component", "api").Logger()}, nil
}

// route is one operation of the API: its method and path pattern (as
// http.ServeMux takes them), the role it needs ("" for none) and its
// handler. Routes lists them all; the OpenAPI test holds the document
// against it.
type route struct {
	Method, Path string
	Role         tokens.Role
	handle       func(w http.ResponseWriter, r *http.Request, who *tokens.Token)
}

// routes returns every operation of the API.
func (a *API) routes() []route {
	return []route{
		{"GET", "/api/openapi.json", "", a.openAPI},
		{"GET", "/api/whoami", tokens.Viewer, a.whoami},
		{"GET", "/api/pipelines", tokens.Viewer, a.listPipelines},
		{"POST", "/api/pipelines/{id}/runs", tokens.Operator, a.triggerRun},
		{"GET", "/api/runs", tokens.Viewer, a.listRuns},
		{"GET", "/api/runs/{id}", tokens.Viewer, a.getRun},
		{"POST", "/api/runs/{id}/cancel", tokens.Operator, a.cancelRun},
		{"POST", "/api/runs/{id}/retry", tokens.Operator, a.retryRun},
		{"POST", "/api/runs/{id}/priority", tokens.Operator, a.setPriority},
		{"POST", "/api/bulk/{action}", tokens.Operator, a.bulk},
		{"GET", "/api/runs/{id}/logs", tokens.Viewer, a.runLogs},
		{"GET", "/api/runs/{id}/artifacts", tokens.Viewer, a.runArtifacts},
		{"GET", "/api/queues", tokens.Viewer, a.queues},
		{"POST", "/api/queues/{queue}/pause", tokens.Operator, a.pauseQueue},
		{"POST", "/api/queues/{queue}/resume", tokens.Operator, a.resumeQueue},
		{"GET", "/api/agents", tokens.Viewer, a.agents},
		{"POST", "/api/agents/{id}/drain", tokens.Operator, a.drainAgent},
		{"GET", "/api/audit", tokens.Viewer, a.audit},
		{"POST", "/api/session", "", a.login},
		{"DELETE", "/api/session", "", a.logout},
	}
}

// Operation is one operation the API serves, for checking the OpenAPI
// document against it.
type Operation struct {
	Method, Path string
	// Role is the least role it needs; "" for none.
	Role tokens.Role
}

// Operations returns every operation the API serves.
func (a *API) Operations() []Operation {
	var out []Operation
	for _, rt := range a.routes() {
		out = append(out, Operation{Method: rt.Method, Path: rt.Path, Role: rt.Role})
	}
	return out
}

// Handler returns the API's handler, for paths under /api/.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range a.routes() {
		mux.HandleFunc(rt.Method+" "+rt.Path, func(w http.ResponseWriter, r *http.Request) {
			var who *tokens.Token
			if rt.Role != "" {
				var ok bool
				if who, ok = a.authorize(w, r, rt.Role); !ok {
					return
				}
			}
			rt.handle(w, r, who)
		})
	}
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such API path: %s %s (GET /api/openapi.json lists them)", r.Method, r.URL.Path)
	})
	return mux
}

// CookieName is the cookie the UI keeps its token in; the API takes it as
// it takes an Authorization header.
const CookieName = "weft_token"

// authorize finds the request's token and checks that its role allows
// need, answering 401 or 403 when not.
func (a *API) authorize(w http.ResponseWriter, r *http.Request, need tokens.Role) (*tokens.Token, bool) {
	secret, fromCookie := bearer(r)
	if secret == "" {
		writeError(w, http.StatusUnauthorized, "no token: send Authorization: Bearer <token> (weft token create makes one)")
		return nil, false
	}
	// A cookie rides along with any page's request to this host; a
	// change made with it must come from a script of the UI, which sets
	// this header (a cross-site form cannot).
	if fromCookie && r.Method != http.MethodGet && r.Header.Get("X-Weft-UI") == "" {
		writeError(w, http.StatusForbidden, "a change with the UI's cookie needs the X-Weft-UI header")
		return nil, false
	}
	t, err := a.cfg.Tokens.Verify(r.Context(), secret)
	if errors.Is(err, tokens.ErrUnknown) {
		writeError(w, http.StatusUnauthorized, "token refused: %v", err)
		return nil, false
	}
	if err != nil {
		a.fail(w, r, err)
		return nil, false
	}
	if !t.Role.Allows(need) {
		writeError(w, http.StatusForbidden, "token %q has role %s; %s %s needs %s", t.Name, t.Role, r.Method, r.URL.Path, need)
		return nil, false
	}
	return t, true
}

// bearer returns the request's token, from its Authorization header or
// else the UI's cookie, and whether it came from the cookie.
func bearer(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, token, _ := strings.Cut(h, " ")
		if strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(token), false
		}
		return "", false
	}
	if c, err := r.Cookie(CookieName); err == nil {
		return c.Value, true
	}
	return "", false
}

func (a *API) openAPI(w http.ResponseWriter, _ *http.Request, _ *tokens.Token) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(OpenAPI)
}

// LoginRequest is the body of POST /api/session.
type LoginRequest struct {
	Token string `json:"token"`
}

// login checks a token and keeps it in the UI's cookie: HttpOnly, so no
// script reads it, and SameSite=Strict, so no other site's page sends it.
func (a *API) login(w http.ResponseWriter, r *http.Request, _ *tokens.Token) {
	var req LoginRequest
	if !decodeBody(w, r, &req) {
		return
	}
	t, err := a.cfg.Tokens.Verify(r.Context(), strings.TrimSpace(req.Token))
	if errors.Is(err, tokens.ErrUnknown) {
		writeError(w, http.StatusUnauthorized, "token refused: %v", err)
		return
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: strings.TrimSpace(req.Token), Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: 30 * 24 * 3600})
	writeJSON(w, http.StatusOK, map[string]any{"id": t.ID, "name": t.Name, "role": t.Role})
}

// logout drops the UI's cookie.
func (a *API) logout(w http.ResponseWriter, r *http.Request, _ *tokens.Token) {
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) whoami(w http.ResponseWriter, _ *http.Request, who *tokens.Token) {
	writeJSON(w, http.StatusOK, map[string]any{"id": who.ID, "name": who.Name, "role": who.Role})
}

// Error is the body of every error answer.
type Error struct {
	// Error says what went wrong.
	Error string `json:"error"`
	// Errors are a pipeline's problems, FILE:LINE:COL: field: message.
	Errors []string `json:"errors,omitempty"`
	// Reason, RetryAfter and QueueDepth explain a refused trigger (429).
	Reason            string `json:"reason,omitempty"`
	RetryAfterSeconds int    `json:"retry_after_seconds,omitempty"`
	QueueDepth        *int   `json:"queue_depth,omitempty"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, format string, args ...any) {
	writeJSON(w, code, Error{Error: fmt.Sprintf(format, args...)})
}

// fail answers an error of the bus: 504 when the request's context ended
// or timed out, 502 otherwise; the details go to the log.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	a.log.Error().Err(err).Str("method", r.Method).Str("path", r.URL.Path).Msg("request failed")
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		writeError(w, http.StatusGatewayTimeout, "the fleet did not answer in time: %v", err)
		return
	}
	writeError(w, http.StatusBadGateway, "the fleet failed: %v", err)
}

// decodeBody decodes a JSON body of at most 1 MiB into v, refusing
// unknown fields; an empty body leaves v as it is.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	body := http.MaxBytesReader(w, r.Body, 1<<20)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "body over %d bytes", tooBig.Limit)
			return false
		}
		writeError(w, http.StatusBadRequest, "body: %v", err)
		return false
	}
	return true
}
