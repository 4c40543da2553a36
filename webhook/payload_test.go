package webhook

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/weft-ci/weft/repos"
)

// FuzzParse parses arbitrary payloads as each event: parse never panics,
// fails only with errIgnored or errMalformed, and what it returns is a
// delivery a trigger can be built from.
func FuzzParse(f *testing.F) {
	for _, name := range []string{"push.json", "pull_request.json", "ping.json"} {
		data, err := os.ReadFile("testdata/" + name)
		if err != nil {
			f.Fatal(err)
		}
		text := strings.NewReplacer("__REPO__", "acme/app", "__SHA__", "7b3f2d9e4c1a5b6d8e0f1a2b3c4d5e6f7a8b9c0d",
			"__HEAD_REPO__", "contributor/app", "__HEAD_OWNER__", "contributor", "__FORK__", "true").Replace(string(data))
		for _, event := range []string{"push", "pull_request", "ping"} {
			f.Add(event, []byte(text))
		}
	}
	f.Add("push", []byte(`{"ref":"refs/tags/v1","after":"7b3f2d9e4c1a5b6d8e0f1a2b3c4d5e6f7a8b9c0d","repository":{"full_name":"a/b"}}`))
	f.Add("pull_request", []byte(`{"action":"synchronize","number":3,"pull_request":{"head":{"sha":"7b3f2d9e4c1a5b6d8e0f1a2b3c4d5e6f7a8b9c0d","repo":null}},"repository":{"full_name":"a/b"}}`))
	f.Fuzz(func(t *testing.T, event string, body []byte) {
		d, err := parse(event, "id", body)
		if err != nil {
			if !errors.Is(err, errIgnored) && !errors.Is(err, errMalformed) {
				t.Fatalf("parse(%s) = %v, neither ignored nor malformed", event, err)
			}
			return
		}
		if !shaRE.MatchString(d.Commit) || !slices.Contains(repos.Kinds, d.Kind) || d.Ref == "" {
			t.Fatalf("parse(%s) = %+v: no commit, kind or ref to build", event, d)
		}
		if d.Kind == repos.KindPullRequest && d.PullRequest <= 0 {
			t.Fatalf("parse(%s) = %+v: a pull request without its number", event, d)
		}
	})
}
