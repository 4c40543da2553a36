package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/runstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/wire"
)

// Status is one commit status to post (GitHub's POST
// /repos/{owner}/{repo}/statuses/{sha}).
type Status struct {
	Repo   string `json:"repo"`
	Commit string `json:"commit"`
	// State is pending, success, failure or error.
	State       string `json:"state"`
	Context     string `json:"context"`
	Description string `json:"description,omitempty"`
	TargetURL   string `json:"target_url,omitempty"`
	// Seq orders the statuses of one context: a later one replaces an
	// earlier one, which is never sent after it.
	Seq uint64 `json:"seq"`
}

// Sender limits: a status is tried at most statusMaxDeliver times, at
// most statusMaxDelay apart.
const (
	statusMaxDeliver = 30
	statusMaxDelay   = 10 * time.Minute
	statusTimeout    = 10 * time.Second
)

// Reporter posts commit statuses for runs of repositories weft builds.
// It follows the events stream: a run's first stage start makes its
// context pending, the run's end success, failure or error. Each status
// goes through the statuses stream, which keeps the latest of each
// repository, commit and context: a restart loses none, and updates that
// pile up while the API is slow or refuses are sent once, the latest. A
// 5xx is retried with backoff and jitter; a rate limit (403 or 429) waits
// for retry-after or x-ratelimit-reset. Nothing of this is on a run's
// path: a slow or failing API delays no run.
type Reporter struct {
	js        jetstream.JetStream
	repos     *repos.Store
	runs      *runstore.Store
	http      *http.Client
	targetURL string // prefix of a run's target URL; "" for none
	log       zerolog.Logger
	now       func() time.Time

	mu      sync.Mutex
	blocked map[string]time.Time // until when an API base's rate limit holds
	stream  jetstream.Stream     // the statuses stream; set by Run
}

// NewReporter returns a reporter; a run's target URL is targetURL/runs/ID
// when targetURL is set.
func NewReporter(ctx context.Context, js jetstream.JetStream, rs *repos.Store, targetURL string, log zerolog.Logger) (*Reporter, error) {
	runs, err := runstore.Open(ctx, js)
	if err != nil {
		return nil, err
	}
	return &Reporter{js: js, repos: rs, runs: runs, http: &http.Client{Timeout: statusTimeout}, targetURL: strings.TrimRight(targetURL, "/"),
		log: log.With().Str("component", "github-status").Logger(), now: time.Now, blocked: map[string]time.Time{}}, nil
}

// Run follows events and sends statuses until ctx ends.
func (r *Reporter) Run(ctx context.Context) error {
	events, err := r.js.CreateOrUpdateConsumer(ctx, subjects.EventsStream, jetstream.ConsumerConfig{
		Durable: subjects.StatusEvents, AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute,
		FilterSubject: subjects.AllEvents, DeliverPolicy: jetstream.DeliverNewPolicy,
	})
	if err != nil {
		return fmt.Errorf("webhook: status events consumer: %w", err)
	}
	sender, err := r.js.CreateOrUpdateConsumer(ctx, subjects.StatusesStream, jetstream.ConsumerConfig{
		Durable: subjects.StatusSender, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 2 * statusTimeout,
		FilterSubject: subjects.AllStatuses, MaxDeliver: statusMaxDeliver,
	})
	if err != nil {
		return fmt.Errorf("webhook: status sender consumer: %w", err)
	}
	if r.stream, err = r.js.Stream(ctx, subjects.StatusesStream); err != nil {
		return fmt.Errorf("webhook: stream %s: %w", subjects.StatusesStream, err)
	}
	var wg sync.WaitGroup
	run := func(c jetstream.Consumer, handle func(context.Context, jetstream.Msg)) {
		if err := consume(ctx, c, r.log, handle); err != nil {
			r.log.Error().Err(err).Msg("consume")
		}
	}
	wg.Go(func() { run(events, r.onEvent) })
	wg.Go(func() { run(sender, r.send) })
	wg.Wait()
	return nil
}

// onEvent turns an event of a run from a repository into its status.
func (r *Reporter) onEvent(ctx context.Context, m jetstream.Msg) {
	var ev wire.Event
	if err := json.Unmarshal(m.Data(), &ev); err != nil || (ev.Type != wire.Started && ev.Type != wire.RunFinished) {
		_ = m.Ack()
		return
	}
	run, _, err := r.runs.Header(ctx, ev.RunID)
	if errors.Is(err, runstore.ErrNoRun) {
		_ = m.Ack()
		return
	}
	if err != nil {
		_ = m.NakWithDelay(time.Second)
		return
	}
	if run.CloneURL == "" || run.Commit == "" || run.Repo == "" {
		_ = m.Ack()
		return
	}
	st := Status{Repo: run.Repo, Commit: run.Commit, Context: "weft/" + run.PipelineName, State: "pending", Description: "running"}
	if ev.Type == wire.RunFinished {
		switch run.State {
		case wire.RunSucceeded:
			st.State, st.Description = "success", "succeeded"
		case wire.RunFailed:
			st.State, st.Description = "failure", "failed"
		default:
			st.State, st.Description = "error", string(run.State)
		}
	} else if run.State.Terminal() || !run.Started.IsZero() && !run.Started.Equal(ev.Time) {
		// A late start (the finish says the rest), or not the run's first
		// (whose time the run's start is, once applied): pending is said.
		_ = m.Ack()
		return
	}
	if r.targetURL != "" {
		st.TargetURL = r.targetURL + "/runs/" + run.ID
	}
	if meta, err := m.Metadata(); err == nil {
		st.Seq = meta.Sequence.Stream
	}
	if err := r.Queue(ctx, st); err != nil {
		r.log.Warn().Err(err).Str("run_id", run.ID).Msg("queue commit status")
		_ = m.NakWithDelay(time.Second)
		return
	}
	_ = m.Ack()
}

// Queue stores st as the latest status of its context, replacing one not
// yet sent.
func (r *Reporter) Queue(ctx context.Context, st Status) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, err = r.js.Publish(ctx, subjects.Status(st.Repo, st.Commit, st.Context), data)
	return err
}

// send posts one status; a refusal is retried when it can succeed later.
func (r *Reporter) send(ctx context.Context, m jetstream.Msg) {
	var st Status
	if err := json.Unmarshal(m.Data(), &st); err != nil {
		_ = m.Term()
		return
	}
	log := r.log.With().Str("repo", st.Repo).Str("commit", st.Commit).Str("context", st.Context).Str("state", st.State).Logger()
	repo, err := r.repos.Get(ctx, st.Repo)
	if err != nil {
		log.Warn().Err(err).Msg("commit status dropped: no repository settings")
		_ = m.Term()
		return
	}
	delivered := uint64(1)
	meta, err := m.Metadata()
	if err == nil {
		delivered = meta.NumDelivered
		// A status a later one replaced (the stream keeps the latest of a
		// context) is not sent: only the latest is.
		if last, err := r.stream.GetLastMsgForSubject(ctx, m.Subject()); err == nil && last.Sequence != meta.Sequence.Stream {
			_ = m.Ack()
			return
		}
	}
	// While the API's rate limit holds, nothing is sent to it.
	if until := r.blockedUntil(repo.API()); until.After(r.now()) {
		_ = m.NakWithDelay(until.Sub(r.now()))
		return
	}
	wait, err := r.post(ctx, repo, st)
	if err != nil && wait > 0 {
		r.block(repo.API(), r.now().Add(wait))
	}
	switch {
	case err == nil:
		log.Debug().Msg("commit status posted")
		_ = m.Ack()
	case wait == 0:
		log.Warn().Err(err).Msg("commit status refused")
		_ = m.Term()
	case delivered >= statusMaxDeliver:
		log.Error().Err(err).Uint64("deliveries", delivered).Msg("commit status given up")
		_ = m.Term()
	default:
		if wait < 0 {
			wait = backoff(st, delivered)
		}
		log.Info().Err(err).Dur("retry_in", wait).Msg("commit status deferred")
		_ = m.NakWithDelay(min(wait, statusMaxDelay))
	}
}

func (r *Reporter) blockedUntil(api string) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.blocked[api]
}

func (r *Reporter) block(api string, until time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if until.After(r.blocked[api]) {
		r.blocked[api] = until
	}
}

// post sends st to the GitHub API. On failure wait says when to try
// again: the rate limit's reset, -1 for a backoff (5xx, network), 0
// never (another 4xx).
func (r *Reporter) post(ctx context.Context, repo *repos.Repo, st Status) (wait time.Duration, err error) {
	body, _ := json.Marshal(map[string]string{"state": st.State, "target_url": st.TargetURL, "description": st.Description, "context": st.Context})
	url := repo.API() + "/repos/" + st.Repo + "/statuses/" + st.Commit
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	req.Header.Set("Content-Type", "application/json")
	if repo.Token != "" {
		req.Header.Set("Authorization", "Bearer "+repo.Token)
	}
	resp, err := r.http.Do(req)
	if err != nil {
		return -1, fmt.Errorf("post status: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode/100 == 2:
		return 0, nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusForbidden && limited(resp.Header):
		return r.retryAfter(resp.Header), fmt.Errorf("rate limited (%d)", resp.StatusCode)
	case resp.StatusCode >= 500:
		return -1, fmt.Errorf("status API answered %d", resp.StatusCode)
	}
	return 0, fmt.Errorf("status API answered %d", resp.StatusCode)
}

// limited reports whether a 403 is GitHub's rate limit rather than a
// refusal.
func limited(h http.Header) bool {
	return h.Get("Retry-After") != "" || h.Get("X-Ratelimit-Remaining") == "0"
}

// retryAfter returns how long a rate limit asks to wait: retry-after's
// seconds, else until x-ratelimit-reset (epoch seconds), else a minute
// (GitHub's advice for secondary limits).
func (r *Reporter) retryAfter(h http.Header) time.Duration {
	if s, err := strconv.Atoi(h.Get("Retry-After")); err == nil && s >= 0 {
		return time.Duration(s)*time.Second + 100*time.Millisecond
	}
	if reset, err := strconv.ParseInt(h.Get("X-Ratelimit-Reset"), 10, 64); err == nil {
		if d := time.Until(time.Unix(reset, 0)); d > 0 {
			return d + time.Second // the reset is in whole seconds
		}
		return time.Second
	}
	return time.Minute
}

// backoff is the delay before the delivered-th try of st after a 5xx:
// 1 s doubling, with +-20 % jitter derived from the status.
func backoff(st Status, delivered uint64) time.Duration {
	d := min(time.Second<<min(delivered-1, 10), statusMaxDelay)
	h := fnv.New32a()
	fmt.Fprintf(h, "%s/%s/%s/%d", st.Repo, st.Commit, st.Context, delivered)
	jitter := float64(h.Sum32()%4001)/10000 - 0.2
	return time.Duration(float64(d) * (1 + jitter))
}
