package webhook

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/repos"
)

// RecoverWindow is how far back GitHub keeps a hook's deliveries.
const RecoverWindow = 72 * time.Hour

// hookDelivery is an entry of GitHub's list of a hook's deliveries (GET
// /repos/{owner}/{repo}/hooks/{hook_id}/deliveries).
type hookDelivery struct {
	ID          int64     `json:"id"`
	GUID        string    `json:"guid"`
	DeliveredAt time.Time `json:"delivered_at"`
	Redelivery  bool      `json:"redelivery"`
	Status      string    `json:"status"`
	StatusCode  int       `json:"status_code"`
	Event       string    `json:"event"`
}

// Recovered is what a recovery pass did for one repository.
type Recovered struct {
	Repo string `json:"repo"`
	// Seen is how many deliveries (by GUID) the hook made in the window.
	Seen int `json:"seen"`
	// Redelivered are the GUIDs asked for again: every attempt of each
	// failed.
	Redelivered []string `json:"redelivered"`
	// Error says why the pass failed for this repository.
	Error string `json:"error,omitempty"`
}

// Recoverer asks GitHub to redeliver the deliveries that failed while
// the bridge was down or refused them: GitHub does not retry a failed
// delivery by itself. A delivery redelivered after all starts no second
// run (the bridge stores a delivery id once, and a trigger once).
type Recoverer struct {
	repos *repos.Store
	http  *http.Client
	log   zerolog.Logger
	now   func() time.Time
}

// NewRecoverer returns a recoverer of the repositories in rs that have a
// hook id and a token.
func NewRecoverer(rs *repos.Store, log zerolog.Logger) *Recoverer {
	return &Recoverer{repos: rs, http: &http.Client{Timeout: 30 * time.Second}, log: log.With().Str("component", "webhook-recover").Logger(), now: time.Now}
}

// Pass runs one recovery pass over every repository that has a hook id.
func (r *Recoverer) Pass(ctx context.Context) ([]Recovered, error) {
	list, err := r.repos.List(ctx)
	if err != nil {
		return nil, err
	}
	var out []Recovered
	for _, repo := range list {
		if repo.HookID == 0 {
			continue
		}
		rec := Recovered{Repo: repo.Name}
		if err := r.recover(ctx, repo, &rec); err != nil {
			rec.Error = err.Error()
			r.log.Warn().Err(err).Str("repo", repo.Name).Msg("recover deliveries")
		}
		out = append(out, rec)
	}
	return out, nil
}

// Run runs a pass every interval until ctx ends, the first at once.
func (r *Recoverer) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if recs, err := r.Pass(ctx); err != nil {
			r.log.Warn().Err(err).Msg("recover deliveries")
		} else {
			for _, rec := range recs {
				if len(rec.Redelivered) > 0 {
					r.log.Info().Str("repo", rec.Repo).Strs("redelivered", rec.Redelivered).Msg("failed deliveries redelivered")
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

var nextLinkRE = regexp.MustCompile(`<([^>]+)>;\s*rel="next"`)

func (r *Recoverer) recover(ctx context.Context, repo *repos.Repo, rec *Recovered) error {
	base := fmt.Sprintf("%s/repos/%s/hooks/%d/deliveries", repo.API(), repo.Name, repo.HookID)
	since := r.now().Add(-RecoverWindow)
	ok := map[string]bool{}    // GUIDs with a successful attempt
	last := map[string]int64{} // the latest attempt's id of each GUID
	var order []string
	next := base + "?per_page=100"
	for next != "" {
		var page []hookDelivery
		link, err := r.get(ctx, repo, next, &page)
		if err != nil {
			return err
		}
		old := false
		for _, d := range page {
			if d.DeliveredAt.Before(since) {
				old = true
				continue
			}
			if _, seen := last[d.GUID]; !seen {
				order = append(order, d.GUID)
				last[d.GUID] = d.ID
			}
			if d.StatusCode >= 200 && d.StatusCode < 300 {
				ok[d.GUID] = true
			}
		}
		next = ""
		if m := nextLinkRE.FindStringSubmatch(link); m != nil && !old {
			next = m[1]
		}
	}
	rec.Seen = len(order)
	for _, guid := range order {
		if ok[guid] {
			continue
		}
		u := fmt.Sprintf("%s/%d/attempts", base, last[guid])
		if err := r.post(ctx, repo, u); err != nil {
			return fmt.Errorf("redeliver %s: %w", guid, err)
		}
		rec.Redelivered = append(rec.Redelivered, guid)
	}
	return nil
}

func (r *Recoverer) request(ctx context.Context, repo *repos.Repo, method, u string) (*http.Response, error) {
	if _, err := url.Parse(u); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	if repo.Token != "" {
		req.Header.Set("Authorization", "Bearer "+repo.Token)
	}
	return r.http.Do(req)
}

// get reads a JSON page into v and returns its Link header.
func (r *Recoverer) get(ctx context.Context, repo *repos.Repo, u string, v any) (string, error) {
	resp, err := r.request(ctx, repo, http.MethodGet, u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return "", fmt.Errorf("list deliveries: GitHub answered %d", resp.StatusCode)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(v); err != nil {
		return "", fmt.Errorf("list deliveries: %w", err)
	}
	return resp.Header.Get("Link"), nil
}

func (r *Recoverer) post(ctx context.Context, repo *repos.Repo, u string) error {
	resp, err := r.request(ctx, repo, http.MethodPost, u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GitHub answered %d", resp.StatusCode)
	}
	return nil
}

// String renders a recovery for the CLI.
func (rec Recovered) String() string {
	if rec.Error != "" {
		return rec.Repo + ": " + rec.Error
	}
	return rec.Repo + ": " + strconv.Itoa(rec.Seen) + " deliveries in the last 3 days, " + strconv.Itoa(len(rec.Redelivered)) + " redelivered"
}
