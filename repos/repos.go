// Package repos keeps the settings of the repositories weft builds, one
// JetStream KV key per repository (bucket subjects.ReposBucket): where to
// clone it from, the secret its webhook deliveries are signed with, the
// pipeline file, and which queue and priority each kind of event gets.
// The webhook bridge reads them for every delivery; weft repo manages
// them.
package repos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
)

// ErrNotFound is wrapped by the errors of reads of a repository that has
// no settings.
var ErrNotFound = errors.New("repos: no such repository")

// ErrInvalid is wrapped by the errors of Validate.
var ErrInvalid = errors.New("repos: invalid settings")

// DefaultPipeline is the pipeline file a repository's runs read from the
// commit unless its settings name another.
const DefaultPipeline = ".weft.yml"

// Kinds of event a rule applies to.
const (
	// KindDefaultBranch: a push to the repository's default branch.
	KindDefaultBranch = "default_branch"
	// KindBranch: a push to another branch.
	KindBranch = "branch"
	// KindTag: a pushed tag.
	KindTag = "tag"
	// KindPullRequest: a pull request opened, pushed to or reopened.
	KindPullRequest = "pull_request"
)

// Kinds lists every kind of event, in the order rules are shown.
var Kinds = []string{KindDefaultBranch, KindBranch, KindTag, KindPullRequest}

// Rule is where the runs of one kind of event go.
type Rule struct {
	// Queue replaces the pipeline's queue for the stages that run on it;
	// empty keeps the pipeline's.
	Queue string `json:"queue,omitempty"`
	// Priority overrides the pipeline's; empty keeps it.
	Priority subjects.Tier `json:"priority,omitempty"`
}

// DefaultRules are the rules of a repository whose settings name none for
// a kind: the default branch on queue main at high priority, pull
// requests on queue pr, tags on queue release at high priority, and other
// branches at normal priority.
var DefaultRules = map[string]Rule{
	KindDefaultBranch: {Queue: "main", Priority: subjects.High},
	KindBranch:        {Priority: subjects.Normal},
	KindTag:           {Queue: "release", Priority: subjects.High},
	KindPullRequest:   {Queue: "pr", Priority: subjects.Normal},
}

// Repo is one repository's settings.
type Repo struct {
	// Name is owner/name, as GitHub's repository.full_name.
	Name string `json:"name"`
	// CloneURL is where agents fetch the commit from (https://, ssh://,
	// git:// or file://).
	CloneURL string `json:"clone_url"`
	// Secret is the webhook secret deliveries are signed with; a
	// repository without one takes no deliveries (its runs are started
	// through the API or the CLI).
	Secret string `json:"secret,omitempty"`
	// DefaultBranch is the branch an API trigger naming none builds;
	// default DefaultBranch.
	DefaultBranch string `json:"default_branch,omitempty"`
	// Pipeline is the pipeline file's path in the repository; default
	// DefaultPipeline.
	Pipeline string `json:"pipeline,omitempty"`
	// Token authenticates clones of a private repository and commit
	// statuses (a personal access token or an installation token); it is
	// never logged nor shown.
	Token string `json:"token,omitempty"`
	// APIBase is the GitHub API's base URL; default
	// https://api.github.com (GitHub Enterprise: https://HOST/api/v3).
	APIBase string `json:"api_base,omitempty"`
	// WIP is the repository's WIP limit, the runs of it in flight at
	// once; 0 is the dispatchers' (--wip). A dispatcher's --wip-repo for
	// it wins.
	WIP int `json:"wip,omitempty"`
	// HookID is the id of the repository's webhook on GitHub, for
	// recovering the deliveries that failed while weft was down (the
	// REST API lists a hook's deliveries of the last 3 days); 0 recovers
	// nothing.
	HookID int64 `json:"hook_id,omitempty"`
	// Rules replace DefaultRules by kind.
	Rules map[string]Rule `json:"rules,omitempty"`
	// Secrets are variables (NAME=value) the stages of trusted runs get:
	// never those of a pull request from a fork.
	Secrets map[string]string `json:"secrets,omitempty"`
}

// DefaultBranch is the default branch of a repository whose settings name
// none.
const DefaultBranch = "main"

// DefaultAPIBase is GitHub's API.
const DefaultAPIBase = "https://api.github.com"

var (
	nameRE   = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,100}/[A-Za-z0-9_.-]{1,100}$`)
	secretRE = regexp.MustCompile(`^[A-Z_][A-Z0-9_]{0,127}$`)
)

// Validate checks r and fills its defaults.
func (r *Repo) Validate() error {
	if !nameRE.MatchString(r.Name) {
		return fmt.Errorf("%w: name %q: want owner/name", ErrInvalid, r.Name)
	}
	u, err := url.Parse(r.CloneURL)
	if err != nil || !slices.Contains([]string{"https", "http", "ssh", "git", "file"}, u.Scheme) {
		return fmt.Errorf("%w: %s: clone URL %q: want https://, ssh://, git:// or file://", ErrInvalid, r.Name, r.CloneURL)
	}
	if u.User != nil {
		return fmt.Errorf("%w: %s: the clone URL carries credentials: give them as the token", ErrInvalid, r.Name)
	}
	if r.DefaultBranch == "" {
		r.DefaultBranch = DefaultBranch
	}
	if r.Pipeline == "" {
		r.Pipeline = DefaultPipeline
	}
	if clean := path.Clean(r.Pipeline); clean != r.Pipeline || strings.HasPrefix(clean, "/") || strings.HasPrefix(clean, "..") {
		return fmt.Errorf("%w: %s: pipeline path %q: want a clean path inside the repository", ErrInvalid, r.Name, r.Pipeline)
	}
	if r.APIBase != "" {
		if u, err := url.Parse(r.APIBase); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("%w: %s: API base %q: want an http(s) URL", ErrInvalid, r.Name, r.APIBase)
		}
	}
	if r.WIP < 0 {
		return fmt.Errorf("%w: %s: WIP limit %d: want 0 (the dispatchers') or more", ErrInvalid, r.Name, r.WIP)
	}
	for kind, rule := range r.Rules {
		if !slices.Contains(Kinds, kind) {
			return fmt.Errorf("%w: %s: rule for %q: want one of %s", ErrInvalid, r.Name, kind, strings.Join(Kinds, ", "))
		}
		if rule.Queue != "" {
			if err := subjects.ValidateQueue(rule.Queue); err != nil {
				return fmt.Errorf("%w: %s: rule %s: %w", ErrInvalid, r.Name, kind, err)
			}
		}
		if rule.Priority != "" {
			if _, err := subjects.ParseTier(string(rule.Priority)); err != nil {
				return fmt.Errorf("%w: %s: rule %s: %w", ErrInvalid, r.Name, kind, err)
			}
		}
	}
	for name := range r.Secrets {
		if !secretRE.MatchString(name) {
			return fmt.Errorf("%w: %s: secret %q: want an upper-case variable name", ErrInvalid, r.Name, name)
		}
	}
	return nil
}

// Rule returns the rule of kind: the repository's, else DefaultRules'.
func (r *Repo) Rule(kind string) Rule {
	if rule, ok := r.Rules[kind]; ok {
		return rule
	}
	return DefaultRules[kind]
}

// API returns the GitHub API's base URL for the repository.
func (r *Repo) API() string {
	if r.APIBase != "" {
		return strings.TrimRight(r.APIBase, "/")
	}
	return DefaultAPIBase
}

// Store reads and writes repository settings.
type Store struct{ kv jetstream.KeyValue }

// Open returns the store on the provisioned bucket.
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, subjects.ReposBucket)
	if err != nil {
		return nil, fmt.Errorf("repos: bucket %s: %w", subjects.ReposBucket, err)
	}
	return &Store{kv: kv}, nil
}

// Get returns the settings of repository name; wraps ErrNotFound when it
// has none.
func (s *Store) Get(ctx context.Context, name string) (*Repo, error) {
	e, err := s.kv.Get(ctx, subjects.RepoToken(name))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return nil, fmt.Errorf("repos: get %s: %w", name, err)
	}
	var r Repo
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, fmt.Errorf("repos: decode %s: %w", name, err)
	}
	return &r, nil
}

// Put validates r and stores it, replacing what the repository had.
func (s *Store) Put(ctx context.Context, r *Repo) error {
	if err := r.Validate(); err != nil {
		return err
	}
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("repos: encode %s: %w", r.Name, err)
	}
	if _, err := s.kv.Put(ctx, subjects.RepoToken(r.Name), data); err != nil {
		return fmt.Errorf("repos: put %s: %w", r.Name, err)
	}
	return nil
}

// Delete removes a repository's settings; wraps ErrNotFound when it has
// none.
func (s *Store) Delete(ctx context.Context, name string) error {
	if _, err := s.Get(ctx, name); err != nil {
		return err
	}
	if err := s.kv.Delete(ctx, subjects.RepoToken(name)); err != nil {
		return fmt.Errorf("repos: delete %s: %w", name, err)
	}
	return nil
}

// List returns every repository's settings, by name.
func (s *Store) List(ctx context.Context) ([]*Repo, error) {
	keys, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("repos: list: %w", err)
	}
	var out []*Repo
	for k := range keys.Keys() {
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("repos: get %s: %w", k, err)
		}
		var r Repo
		if err := json.Unmarshal(e.Value(), &r); err == nil {
			out = append(out, &r)
		}
	}
	slices.SortFunc(out, func(a, b *Repo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// WatchWIP calls fn with the WIP limit of each repository (by repository
// token; 0 when its settings name none or were removed) as its settings
// are, then as they change, until ctx ends.
func (s *Store) WatchWIP(ctx context.Context, fn func(token string, wip int)) error {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("repos: watch: %w", err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return nil
			}
			if e == nil {
				continue // the initial values are in
			}
			var r Repo
			if e.Operation() != jetstream.KeyValuePut || json.Unmarshal(e.Value(), &r) != nil {
				fn(e.Key(), 0)
				continue
			}
			fn(e.Key(), r.WIP)
		}
	}
}
