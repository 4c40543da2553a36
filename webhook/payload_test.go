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

func TestParseKinds(t *testing.T) {
	const sha = "7b3f2d9e4c1a5b6d8e0f1a2b3c4d5e6f7a8b9c0d"
	push := func(ref string) []byte {
		return []byte(`{"ref":"` + ref + `","after":"` + sha + `","repository":{"full_name":"a/b","default_branch":"main"},"sender":{"login":"o"}}`)
	}
	tests := []struct {
		name, event string
		body        []byte
		kind        string
		branch      string
		err         error
	}{
		{"default branch", "push", push("refs/heads/main"), repos.KindDefaultBranch, "main", nil},
		{"other branch", "push", push("refs/heads/feature/x"), repos.KindBranch, "feature/x", nil},
		{"tag", "push", push("refs/tags/v1.2.0"), repos.KindTag, "v1.2.0", nil},
		{"a note ref", "push", push("refs/notes/commits"), "", "", errIgnored},
		{"short sha", "push", []byte(`{"ref":"refs/heads/main","after":"7b3f2d9","repository":{"full_name":"a/b"}}`), "", "", errMalformed},
		{"deleted fork", "pull_request", []byte(`{"action":"reopened","number":3,"pull_request":{"head":{"ref":"f","sha":"` + sha + `","repo":null}},"repository":{"full_name":"a/b"}}`), repos.KindPullRequest, "f", nil},
		{"labeled", "pull_request", []byte(`{"action":"labeled","number":3,"repository":{"full_name":"a/b"}}`), "", "", errIgnored},
	}
	for _, tt := range tests {
		d, err := parse(tt.event, "id", tt.body)
		if tt.err != nil {
			if !errors.Is(err, tt.err) {
				t.Errorf("%s: parse = %v, want %v", tt.name, err, tt.err)
			}
			continue
		}
		if err != nil || d.Kind != tt.kind || d.Branch != tt.branch || d.Commit != sha {
			t.Errorf("%s: parse = %+v, %v; want kind %s branch %s", tt.name, d, err, tt.kind, tt.branch)
		}
		if tt.name == "deleted fork" && !d.Fork {
			t.Errorf("%s: a pull request whose head repository is gone is not marked a fork", tt.name)
		}
	}
}
