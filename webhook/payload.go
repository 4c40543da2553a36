package webhook

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/wire"
)

// errIgnored is wrapped by Parse's errors for deliveries weft does not
// build (an unsupported event or action, a deleted ref).
var errIgnored = errors.New("ignored")

// errMalformed is wrapped by Parse's errors for payloads that are not
// what GitHub sends for their event.
var errMalformed = errors.New("malformed payload")

// repository is the part of a payload's repository weft reads.
type repository struct {
	FullName      string `json:"full_name"`
	DefaultBranch string `json:"default_branch"`
	Fork          bool   `json:"fork"`
}

// user is a payload's sender.
type user struct {
	Login string `json:"login"`
}

// pushPayload is GitHub's push event payload, the fields weft reads.
type pushPayload struct {
	Ref        string     `json:"ref"`
	After      string     `json:"after"`
	Deleted    bool       `json:"deleted"`
	Repository repository `json:"repository"`
	Sender     user       `json:"sender"`
}

// pullRequestPayload is GitHub's pull_request event payload, the fields
// weft reads.
type pullRequestPayload struct {
	Action      string `json:"action"`
	Number      int    `json:"number"`
	PullRequest struct {
		Head struct {
			Ref  string      `json:"ref"`
			SHA  string      `json:"sha"`
			Repo *repository `json:"repo"`
		} `json:"head"`
		Base struct {
			Ref  string     `json:"ref"`
			Repo repository `json:"repo"`
		} `json:"base"`
	} `json:"pull_request"`
	Repository repository `json:"repository"`
	Sender     user       `json:"sender"`
}

// repoOf reads the repository a payload is about.
func repoOf(body []byte) (string, error) {
	var p struct {
		Repository *repository `json:"repository"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return "", fmt.Errorf("%w: %v", errMalformed, err)
	}
	if p.Repository == nil || p.Repository.FullName == "" {
		return "", fmt.Errorf("%w: no repository.full_name", errMalformed)
	}
	return p.Repository.FullName, nil
}

var shaRE = regexp.MustCompile(`^([0-9a-f]{40}|[0-9a-f]{64})$`)

// parse turns a delivery of event with payload body into what a trigger
// needs; errIgnored for what weft does not build, errMalformed for a
// payload that is not GitHub's.
func parse(event, id string, body []byte) (*wire.Delivery, error) {
	switch event {
	case "push":
		var p pushPayload
		if err := json.Unmarshal(body, &p); err != nil {
			return nil, fmt.Errorf("%w: %v", errMalformed, err)
		}
		if p.Deleted || strings.Trim(p.After, "0") == "" {
			return nil, fmt.Errorf("%w: %s was deleted", errIgnored, p.Ref)
		}
		if !shaRE.MatchString(p.After) {
			return nil, fmt.Errorf("%w: push after %q is not a commit id", errMalformed, p.After)
		}
		d := &wire.Delivery{ID: id, Event: event, Repo: p.Repository.FullName, Ref: p.Ref, Commit: p.After, Sender: p.Sender.Login}
		switch {
		case strings.HasPrefix(p.Ref, "refs/heads/"):
			d.Branch = strings.TrimPrefix(p.Ref, "refs/heads/")
			d.Kind = repos.KindBranch
			if d.Branch == p.Repository.DefaultBranch {
				d.Kind = repos.KindDefaultBranch
			}
		case strings.HasPrefix(p.Ref, "refs/tags/"):
			d.Branch, d.Kind = strings.TrimPrefix(p.Ref, "refs/tags/"), repos.KindTag
		default:
			return nil, fmt.Errorf("%w: push to %q, neither a branch nor a tag", errIgnored, p.Ref)
		}
		return d, nil
	case "pull_request":
		var p pullRequestPayload
		if err := json.Unmarshal(body, &p); err != nil {
			return nil, fmt.Errorf("%w: %v", errMalformed, err)
		}
		switch p.Action {
		case "opened", "synchronize", "reopened":
		default:
			return nil, fmt.Errorf("%w: pull_request action %q", errIgnored, p.Action)
		}
		head := p.PullRequest.Head
		if !shaRE.MatchString(head.SHA) || p.Number <= 0 {
			return nil, fmt.Errorf("%w: pull request without a number and a head sha", errMalformed)
		}
		// The head repository is gone (null) for a deleted fork: a fork all
		// the same.
		fork := head.Repo == nil || head.Repo.FullName != p.Repository.FullName
		return &wire.Delivery{
			ID: id, Event: event, Action: p.Action, Repo: p.Repository.FullName, Kind: repos.KindPullRequest,
			Ref: "refs/pull/" + fmt.Sprint(p.Number) + "/head", Branch: head.Ref, Commit: head.SHA,
			PullRequest: p.Number, Fork: fork, Sender: p.Sender.Login,
		}, nil
	}
	return nil, fmt.Errorf("%w: event %q", errIgnored, event)
}
