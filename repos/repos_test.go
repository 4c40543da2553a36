package repos_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/test"
)

func TestSettingsAreValidatedStoredAndWatched(t *testing.T) {
	b := test.Bus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rs, err := repos.Open(ctx, b.JS)
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]repos.Repo{
		"bad name":      {Name: "noslash", CloneURL: "https://x/y", Secret: "s"},
		"user in URL":   {Name: "a/b", CloneURL: "https://u:p@x/y", Secret: "s"},
		"escaping path": {Name: "a/b", CloneURL: "https://x/y", Secret: "s", Pipeline: "../etc/passwd"},
		"bad rule":      {Name: "a/b", CloneURL: "https://x/y", Secret: "s", Rules: map[string]repos.Rule{"merge": {}}},
		"negative WIP":  {Name: "a/b", CloneURL: "https://x/y", Secret: "s", WIP: -1},
	} {
		if err := rs.Put(ctx, &r); !errors.Is(err, repos.ErrInvalid) {
			t.Errorf("%s: Put = %v, want ErrInvalid", name, err)
		}
	}
	var mu sync.Mutex
	seen := map[string]int{}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = rs.WatchWIP(wctx, func(token string, wip int) {
			mu.Lock()
			seen[token] = wip
			mu.Unlock()
		})
	})
	defer func() { stop(); wg.Wait() }()
	r := &repos.Repo{Name: "acme/app", CloneURL: "file:///src", Secret: "s", WIP: 2}
	if err := rs.Put(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got, err := rs.Get(ctx, "acme/app"); err != nil || got.Pipeline != repos.DefaultPipeline || got.DefaultBranch != repos.DefaultBranch || got.Rule(repos.KindPullRequest).Queue != "pr" {
		t.Errorf("Get = %+v, %v; want the default pipeline and rules", got, err)
	}
	if !test.Eventually(10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return seen[subjects.RepoToken("acme/app")] == 2
	}) {
		t.Errorf("WatchWIP saw %v, want acme/app's 2", seen)
	}
	if err := rs.Delete(ctx, "acme/app"); err != nil {
		t.Fatal(err)
	}
	if _, err := rs.Get(ctx, "acme/app"); !errors.Is(err, repos.ErrNotFound) {
		t.Errorf("Get after Delete = %v", err)
	}
}
