package pipeline

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/subjects"
)

const full = `name: backend-api
queue: linux
priority: high
env: {GOFLAGS: -mod=mod, GOMAXPROCS: 4, VERBOSE: true, EMPTY: ""}
concurrency:
  group: deploy-${WEFT_BRANCH}
  cancel_in_progress: true
stages:
  - key: build
    name: Build
    image: docker.io/library/golang:1.23
    commands: [go build ./..., ls bin]
    queue: pr
    env: {CGO_ENABLED: "0"}
    timeout: 10m
    retry: {automatic: 2, exit_status: [75, 1]}
    resources: {cpus: 0.5, memory: 512Mi}
    artifacts: [bin/*, "dist/**/*.tar.gz"]
    cache: {key: "go-${hash:go.sum}-${arch}", restore_keys: [go-], paths: [.cache/go-build, vendor]}
    allow_failure: true
  - key: test
    commands: go test ./...
    depends_on: build
    resources: {cpus: 2, memory: 1000000}
  - key: package
    commands:
      - |
        tar czf out.tgz bin
    depends_on: [build, test]
    resources: {memory: 2G}
`

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want *Pipeline
	}{
		{
			name: "full",
			src:  full,
			want: &Pipeline{
				Name:        "backend-api",
				Queue:       "linux",
				Priority:    subjects.High,
				Env:         map[string]string{"GOFLAGS": "-mod=mod", "GOMAXPROCS": "4", "VERBOSE": "true", "EMPTY": ""},
				Concurrency: &Concurrency{Group: "deploy-${WEFT_BRANCH}", CancelInProgress: true},
				Stages: []Stage{
					{
						Key:          "build",
						Name:         "Build",
						Image:        "docker.io/library/golang:1.23",
						Commands:     []string{"go build ./...", "ls bin"},
						Queue:        "pr",
						Env:          map[string]string{"CGO_ENABLED": "0"},
						Timeout:      10 * time.Minute,
						Retry:        Retry{Automatic: 2, ExitStatus: []int{75, 1}},
						Resources:    Resources{CPUs: 0.5, Memory: 512 << 20},
						Artifacts:    []string{"bin/*", "dist/**/*.tar.gz"},
						Cache:        &Cache{Key: "go-${hash:go.sum}-${arch}", RestoreKeys: []string{"go-"}, Paths: []string{".cache/go-build", "vendor"}},
						AllowFailure: true,
					},
					{
						Key:       "test",
						Commands:  []string{"go test ./..."},
						DependsOn: []string{"build"},
						Queue:     "linux",
						Resources: Resources{CPUs: 2, Memory: 1000000},
					},
					{
						Key:       "package",
						Commands:  []string{"tar czf out.tgz bin\n"},
						DependsOn: []string{"build", "test"},
						Queue:     "linux",
						Resources: Resources{Memory: 2e9},
					},
				},
			},
		},
		{
			name: "defaults",
			src:  "name: x\nstages:\n  - key: a\n    commands: [make]\n",
			want: &Pipeline{
				Name:     "x",
				Queue:    subjects.DefaultQueue,
				Priority: subjects.Normal,
				Stages:   []Stage{{Key: "a", Commands: []string{"make"}, Queue: subjects.DefaultQueue}},
			},
		},
		{
			name: "aliases",
			src: `name: x
env: &env {A: "1"}
stages:
  - key: a
    commands: &cmds [make, make test]
    env: *env
  - key: b
    commands: *cmds
    depends_on: [a]
`,
			want: &Pipeline{
				Name:     "x",
				Queue:    subjects.DefaultQueue,
				Priority: subjects.Normal,
				Env:      map[string]string{"A": "1"},
				Stages: []Stage{
					{Key: "a", Commands: []string{"make", "make test"}, Queue: subjects.DefaultQueue, Env: map[string]string{"A": "1"}},
					{Key: "b", Commands: []string{"make", "make test"}, DependsOn: []string{"a"}, Queue: subjects.DefaultQueue},
				},
			},
		},
		{
			name: "memory units",
			src: `name: x
stages:
  - {key: a, commands: x, resources: {memory: 1Ki}}
  - {key: b, commands: x, resources: {memory: 3Gi}}
  - {key: c, commands: x, resources: {memory: 2Ti}}
  - {key: d, commands: x, resources: {memory: 5K}}
  - {key: e, commands: x, resources: {memory: 7M}}
  - {key: f, commands: x, resources: {memory: 1T}}
  - {key: g, commands: x, resources: {memory: "42"}}
---
`,
			want: &Pipeline{
				Name:     "x",
				Queue:    subjects.DefaultQueue,
				Priority: subjects.Normal,
				Stages: []Stage{
					{Key: "a", Commands: []string{"x"}, Queue: "default", Resources: Resources{Memory: 1 << 10}},
					{Key: "b", Commands: []string{"x"}, Queue: "default", Resources: Resources{Memory: 3 << 30}},
					{Key: "c", Commands: []string{"x"}, Queue: "default", Resources: Resources{Memory: 2 << 40}},
					{Key: "d", Commands: []string{"x"}, Queue: "default", Resources: Resources{Memory: 5e3}},
					{Key: "e", Commands: []string{"x"}, Queue: "default", Resources: Resources{Memory: 7e6}},
					{Key: "f", Commands: []string{"x"}, Queue: "default", Resources: Resources{Memory: 1e12}},
					{Key: "g", Commands: []string{"x"}, Queue: "default", Resources: Resources{Memory: 42}},
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("p.yml", []byte(tt.src))
			tt.want.Prepare()
			if err != nil || !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Parse(%q) = %+v, %v, want %+v", tt.src, got, err, tt.want)
			}
			data, err := json.Marshal(got)
			if err != nil {
				t.Fatalf("json.Marshal(%+v): %v", got, err)
			}
			var back Pipeline
			err = json.Unmarshal(data, &back)
			back.Prepare()
			if err != nil || !reflect.DeepEqual(&back, tt.want) {
				t.Fatalf("json round trip of %s = %+v, %v, want %+v", data, &back, err, tt.want)
			}
		})
	}
}

func TestParseJSONOmitsDefaults(t *testing.T) {
	p, err := Parse("p.yml", []byte("name: x\nstages: [{key: a, commands: make}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"name":"x","queue":"default","priority":"normal","stages":[{"key":"a","commands":["make"],"queue":"default"}]}`
	if string(data) != want {
		t.Errorf("json.Marshal(%+v) = %s, want %s", p, data, want)
	}
}

// wantErr is one expected problem: its exact "FILE:LINE:COL" position, its
// field and a substring of its message.
type wantErr struct {
	pos, field, msg string
}

// stage1 is a valid pipeline header and first stage that error cases extend;
// its stage "build" starts at line 3.
const stage1 = "name: x\nstages:\n  - key: build\n    commands: [make]\n"

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []wantErr
	}{
		// The file as a whole.
		{"syntax", "name: x\nstages: [\n", []wantErr{{"p.yml:2:1", "(file)", "did not find expected node content"}}},
		{"syntax under-indented key", "name: x\nstages:\n  - key: a\n   commands: [x]\n", []wantErr{{"p.yml:4:4", "(file)", "did not find expected '-' indicator"}}},
		{"syntax unclosed flow", "name: x\nstages:\n  - key: a\n    commands: [\"true\"\n", []wantErr{{"p.yml:4:5", "(file)", "did not find expected ',' or ']'"}}},
		{"syntax after a multi-line flow", "name: x\nstages:\n  - key: a\n    commands: [\n      a,\n      b]\n    depends_on: [\n", []wantErr{{"p.yml:7:5", "(file)", "did not find expected node content"}}},
		{"syntax without line", "name: *a\n", []wantErr{{"p.yml:1:1", "(file)", "unknown anchor 'a'"}}},
		{"empty", "", []wantErr{{"p.yml:1:1", "(file)", "empty pipeline file"}}},
		{"only comments", "# nothing\n\n# here\n", []wantErr{{"p.yml:1:1", "(file)", "empty pipeline file"}}},
		{"null document", "---\n", []wantErr{{"p.yml:2:1", "(file)", "empty pipeline file"}}},
		{"top level sequence", "- name: x\n", []wantErr{{"p.yml:1:1", "(file)", "expected a mapping at the top level, got a sequence"}}},
		{"top level scalar", "hello\n", []wantErr{{"p.yml:1:1", "(file)", "got a string"}}},
		{"second document", stage1 + "---\nname: y\n", []wantErr{{"p.yml:5:1", "(file)", "second YAML document"}}},

		// Keys.
		{"unknown field close", "nmae: x\nstages: [{key: a, commands: x}]\n", []wantErr{
			{"p.yml:1:1", "nmae", `unknown field "nmae", did you mean "name"?`},
			{"p.yml:1:1", "name", "missing required field"},
		}},
		{"unknown stage field close", stage1 + "    comands: [x]\n", []wantErr{{"p.yml:5:5", "stages[0].comands", `unknown field "comands", did you mean "commands"?`}}},
		{"unknown field far", stage1 + "    services: [db]\n", []wantErr{{"p.yml:5:5", "stages[0].services", `unknown field "services"`}}},
		{"unknown retry field", stage1 + "    retry: {automatc: 1}\n", []wantErr{{"p.yml:5:13", "stages[0].retry.automatc", `did you mean "automatic"?`}}},
		{"duplicate key", stage1 + "    commands: [make test]\n", []wantErr{{"p.yml:5:5", "stages[0].commands", `duplicate key "commands" (first at line 4)`}}},
		{"duplicate env key", "env: {A: 1, A: 2}\n" + stage1, []wantErr{{"p.yml:1:13", "env.A", `duplicate key "A" (first at line 1)`}}},
		{"merge key", "name: x\n<<: {queue: a}\nstages: [{key: a, commands: x}]\n", []wantErr{{"p.yml:2:1", "<<", "merge keys"}}},
		{"non-scalar key", "name: x\n[a]: b\nstages: [{key: a, commands: x}]\n", []wantErr{{"p.yml:2:1", "(file)", "expected a string key, got a sequence"}}},

		// Missing required fields, reported at the mapping that lacks them.
		{"missing name", "queue: a\nstages: [{key: a, commands: x}]\n", []wantErr{{"p.yml:1:1", "name", "missing required field"}}},
		{"missing stages", "name: x\n", []wantErr{{"p.yml:1:1", "stages", "missing required field"}}},
		{"missing key", "name: x\nstages:\n  - name: Build\n    commands: [make]\n", []wantErr{{"p.yml:3:5", "stages[0].key", "missing required field"}}},
		{"missing commands", stage1 + "  - key: test\n    name: Test\n", []wantErr{{"p.yml:5:5", "stages[1].commands", "missing required field"}}},
		{"missing group", stage1 + "concurrency: {cancel_in_progress: true}\n", []wantErr{{"p.yml:5:14", "concurrency.group", "missing required field"}}},

		// Wrong YAML types.
		{"commands integer", "name: x\nstages:\n  - key: a\n    commands: 5\n", []wantErr{{"p.yml:4:15", "stages[0].commands", "expected a sequence of commands or a single string, got an integer"}}},
		{"commands element", "name: x\nstages:\n  - key: a\n    commands: [make, [x], {a: b}]\n", []wantErr{
			{"p.yml:4:22", "stages[0].commands[1]", "expected a string, got a sequence"},
			{"p.yml:4:27", "stages[0].commands[2]", "expected a string, got a mapping"},
		}},
		{"commands empty", "name: x\nstages:\n  - key: a\n    commands: []\n", []wantErr{{"p.yml:4:15", "stages[0].commands", "at least one command"}}},
		{"command blank", "name: x\nstages:\n  - key: a\n    commands: [make, \" \"]\n", []wantErr{{"p.yml:4:22", "stages[0].commands[1]", "empty command"}}},
		{"env sequence", stage1 + "env: [a]\n", []wantErr{{"p.yml:5:6", "env", "expected a mapping, got a sequence"}}},
		{"depends_on mapping", stage1 + "    depends_on: {a: b}\n", []wantErr{{"p.yml:5:17", "stages[0].depends_on", "expected a sequence of stage keys or a single string, got a mapping"}}},
		{"stages mapping", "name: x\nstages: {build: {commands: [make]}}\n", []wantErr{{"p.yml:2:9", "stages", "expected a sequence of stages, got a mapping"}}},
		{"stages empty", "name: x\nstages: []\n", []wantErr{{"p.yml:2:9", "stages", "at least one stage"}}},
		{"stage scalar", stage1 + "  - build\n", []wantErr{{"p.yml:5:5", "stages[1]", "expected a mapping (a stage), got a string"}}},
		{"name integer", "name: 42\nstages: [{key: a, commands: x}]\n", []wantErr{{"p.yml:1:7", "name", "expected a string, got an integer"}}},
		{"image null", stage1 + "    image:\n", []wantErr{{"p.yml:5:11", "stages[0].image", "expected a string, got null"}}},
		{"image empty", stage1 + "    image: \"\"\n", []wantErr{{"p.yml:5:12", "stages[0].image", "must not be empty"}}},
		{"allow_failure string", stage1 + "    allow_failure: \"yes\"\n", []wantErr{{"p.yml:5:20", "stages[0].allow_failure", "expected true or false, got a string"}}},
		{"retry sequence", stage1 + "    retry: [2]\n", []wantErr{{"p.yml:5:12", "stages[0].retry", "expected a mapping, got a sequence"}}},

		// Stage keys and the graph.
		{"bad key", "name: x\nstages:\n  - key: Build\n    commands: [make]\n", []wantErr{{"p.yml:3:10", "stages[0].key", `invalid stage key "Build"`}}},
		{"long key", "name: x\nstages:\n  - key: " + strings.Repeat("a", 64) + "\n    commands: [make]\n", []wantErr{{"p.yml:3:10", "stages[0].key", "invalid stage key"}}},
		{"duplicate stage key", stage1 + "  - key: test\n    commands: [make test]\n  - key: build\n    commands: [make]\n", []wantErr{{"p.yml:7:10", "stages[2].key", `duplicate stage key "build" (first at line 3)`}}},
		{"unknown dependency", stage1 + "  - key: test\n    commands: [make test]\n  - key: deploy\n    commands: [make]\n    depends_on: [build, tset]\n", []wantErr{{"p.yml:9:25", "stages[2].depends_on[1]", `unknown stage "tset", did you mean "test"?`}}},
		{"unknown dependency far", stage1 + "    depends_on: zzzzzz\n", []wantErr{{"p.yml:5:17", "stages[0].depends_on", `unknown stage "zzzzzz"`}}},
		{"self dependency", stage1 + "    depends_on: [build]\n", []wantErr{{"p.yml:5:18", "stages[0].depends_on[0]", `stage "build" depends on itself`}}},
		{"repeated dependency", stage1 + "  - {key: t, commands: x, depends_on: [build, build]}\n", []wantErr{{"p.yml:5:47", "stages[1].depends_on[1]", `duplicate dependency "build"`}}},
		{"cycle", `name: x
stages:
  - {key: a, commands: x, depends_on: [b]}
  - {key: b, commands: x, depends_on: [c]}
  - {key: c, commands: x, depends_on: [a]}
  - {key: d, commands: x, depends_on: [a]}
`, []wantErr{{"p.yml:5:40", "stages[2].depends_on[0]", "cycle: c -> a -> b -> c"}}},
		{"two cycles", `name: x
stages:
  - {key: a, commands: x, depends_on: [b]}
  - {key: b, commands: x, depends_on: [a]}
  - {key: c, commands: x, depends_on: [d]}
  - {key: d, commands: x, depends_on: [c]}
`, []wantErr{
			{"p.yml:4:40", "stages[1].depends_on[0]", "cycle: b -> a -> b"},
			{"p.yml:6:40", "stages[3].depends_on[0]", "cycle: d -> c -> d"},
		}},

		// Values.
		{"bad name", "name: -x\nstages: [{key: a, commands: x}]\n", []wantErr{{"p.yml:1:7", "name", `invalid name "-x"`}}},
		{"bad priority", stage1 + "priority: urgent\n", []wantErr{{"p.yml:5:11", "priority", `priority "urgent" is not one of critical, high, normal, low`}}},
		{"bad queue", stage1 + "queue: PR\n", []wantErr{{"p.yml:5:8", "queue", `queue "PR" must be 1-63 characters`}}},
		{"bad agent label", stage1 + "    agents: {OS: linux}\n", []wantErr{{"p.yml:5:14", "stages[0].agents.OS", `label name "OS" must be 1-32 characters`}}},
		{"too many agent labels", stage1 + "    agents: {a: x, b: x, c: x, d: x, e: x}\n", []wantErr{{"p.yml:5:13", "stages[0].agents", "5 labels, at most 4"}}},
		{"bad stage queue", stage1 + "    queue: a.b\n", []wantErr{{"p.yml:5:12", "stages[0].queue", `queue "a.b"`}}},
		{"bad duration", stage1 + "    timeout: 10 minutes\n", []wantErr{{"p.yml:5:14", "stages[0].timeout", `invalid duration "10 minutes"`}}},
		{"zero duration", stage1 + "    timeout: 0s\n", []wantErr{{"p.yml:5:14", "stages[0].timeout", "must be positive"}}},
		{"bare number duration", stage1 + "    timeout: 600\n", []wantErr{{"p.yml:5:14", "stages[0].timeout", "expected a duration such as 10m"}}},
		{"bad env name", stage1 + "    env: {1X: a}\n", []wantErr{{"p.yml:5:11", "stages[0].env.1X", `invalid environment variable name "1X"`}}},
		{"reserved env name", "env:\n  WEFT_BRANCH: main\n" + stage1, []wantErr{{"p.yml:2:3", "env.WEFT_BRANCH", `"WEFT_BRANCH" is reserved`}}},
		{"env null value", "env:\n  A:\n" + stage1, []wantErr{{"p.yml:2:5", "env.A", "got null"}}},
		{"env mapping value", "env:\n  A: {b: c}\n" + stage1, []wantErr{{"p.yml:2:6", "env.A", "expected a scalar value, got a mapping"}}},
		{"cpus zero", stage1 + "    resources: {cpus: 0}\n", []wantErr{{"p.yml:5:23", "stages[0].resources.cpus", "must be a positive number"}}},
		{"cpus infinite", stage1 + "    resources: {cpus: .inf}\n", []wantErr{{"p.yml:5:23", "stages[0].resources.cpus", "must be a positive number"}}},
		{"cpus string", stage1 + "    resources: {cpus: one}\n", []wantErr{{"p.yml:5:23", "stages[0].resources.cpus", "expected a number, got a string"}}},
		{"memory unit", stage1 + "    resources: {memory: 512MB}\n", []wantErr{{"p.yml:5:25", "stages[0].resources.memory", `invalid memory "512MB"`}}},
		{"memory zero", stage1 + "    resources: {memory: 0Mi}\n", []wantErr{{"p.yml:5:25", "stages[0].resources.memory", "must be positive"}}},
		{"memory negative", stage1 + "    resources: {memory: -1}\n", []wantErr{{"p.yml:5:25", "stages[0].resources.memory", "must be a positive number of bytes"}}},
		{"memory overflow", stage1 + "    resources: {memory: 9999999999Ti}\n", []wantErr{{"p.yml:5:25", "stages[0].resources.memory", "too large"}}},
		{"memory float", stage1 + "    resources: {memory: 1.5}\n", []wantErr{{"p.yml:5:25", "stages[0].resources.memory", "got a number"}}},
		{"retry too many", stage1 + "    retry: {automatic: 11}\n", []wantErr{{"p.yml:5:24", "stages[0].retry.automatic", "between 0 and 10, got 11"}}},
		{"retry exit status", stage1 + "    retry: {exit_status: [1, 0, 256, x]}\n", []wantErr{
			{"p.yml:5:30", "stages[0].retry.exit_status[1]", "between 1 and 255, got 0"},
			{"p.yml:5:33", "stages[0].retry.exit_status[2]", "between 1 and 255, got 256"},
			{"p.yml:5:38", "stages[0].retry.exit_status[3]", "expected an integer, got a string"},
		}},
		{"retry exit status scalar", stage1 + "    retry: {exit_status: 75}\n", []wantErr{{"p.yml:5:26", "stages[0].retry.exit_status", "expected a sequence of exit statuses"}}},
		{"artifact paths", stage1 + "    artifacts: [/etc/passwd, ../up, a/../../b, \"[\", \"\", ok/..x]\n", []wantErr{
			{"p.yml:5:17", "stages[0].artifacts[0]", "must be a relative path"},
			{"p.yml:5:30", "stages[0].artifacts[1]", `must not contain a ".." path element`},
			{"p.yml:5:37", "stages[0].artifacts[2]", `".."`},
			{"p.yml:5:48", "stages[0].artifacts[3]", "invalid glob pattern"},
			{"p.yml:5:53", "stages[0].artifacts[4]", "empty artifact pattern"},
		}},
		{"cache missing fields", stage1 + "    cache: {restore_keys: [a]}\n", []wantErr{
			{"p.yml:5:12", "stages[0].cache.key", "missing required field"},
			{"p.yml:5:12", "stages[0].cache.paths", "missing required field"},
		}},
		{"cache key templates", stage1 + "    cache: {key: \"a-${nope}\", restore_keys: [\"${hash:}\", \"${arch:x}\", \"${os\"], paths: [x]}\n", []wantErr{
			{"p.yml:5:18", "stages[0].cache.key", "unknown reference ${nope}"},
			{"p.yml:5:46", "stages[0].cache.restore_keys[0]", "${hash:FILES} needs files"},
			{"p.yml:5:58", "stages[0].cache.restore_keys[1]", "${arch} takes no argument"},
			{"p.yml:5:71", "stages[0].cache.restore_keys[2]", "unclosed ${"},
		}},
		{"cache paths", stage1 + "    cache: {key: k, paths: [/abs, ../up, \"a/*\", \"\"]}\n", []wantErr{
			{"p.yml:5:29", "stages[0].cache.paths[0]", "must be relative to the workspace or start with ~/"},
			{"p.yml:5:35", "stages[0].cache.paths[1]", `".."`},
			{"p.yml:5:42", "stages[0].cache.paths[2]", "not globs"},
			{"p.yml:5:49", "stages[0].cache.paths[3]", "empty cache path"},
		}},
		{"cache home in a container", "name: x\nstages:\n  - key: build\n    image: alpine\n    commands: [make]\n    cache: {key: k, paths: [~/.npm]}\n", []wantErr{
			{"p.yml:6:29", "stages[0].cache.paths[0]", "a container stage's agent cannot reach"},
		}},
		{"empty group", stage1 + "concurrency: {group: \"\"}\n", []wantErr{{"p.yml:5:22", "concurrency.group", "must not be empty"}}},

		// Several problems at once, sorted by position.
		{"three errors", `name: x
priority: urgent
stages:
  - key: build
    comands: [make]
  - key: test
    commands: [make test]
    depends_on: [biuld]
`, []wantErr{
			{"p.yml:2:11", "priority", "is not one of"},
			{"p.yml:4:5", "stages[0].commands", "missing required field"},
			{"p.yml:5:5", "stages[0].comands", `did you mean "commands"?`},
			{"p.yml:8:18", "stages[1].depends_on[0]", `unknown stage "biuld", did you mean "build"?`},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("p.yml", []byte(tt.src))
			if got != nil || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) = %+v, %v, want nil and an error matching ErrInvalid", tt.src, got, err)
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse(%q) = %v (%T), want Errors", tt.src, err, err)
			}
			if len(errs) != len(tt.want) {
				t.Fatalf("Parse(%q) = %v, want %d errors %v", tt.src, err, len(tt.want), tt.want)
			}
			for i, e := range errs {
				w := tt.want[i]
				pos := e.File + ":" + strconv.Itoa(e.Line) + ":" + strconv.Itoa(e.Col)
				if pos != w.pos || e.Field != w.field || !strings.Contains(e.Msg, w.msg) {
					t.Errorf("Parse(%q) error %d = %v, want %s: %s: ...%s...", tt.src, i, e, w.pos, w.field, w.msg)
				}
				if !strings.HasPrefix(e.Error(), w.pos+": "+w.field+": ") {
					t.Errorf("(%+v).Error() = %q, want prefix %q", e, e.Error(), w.pos+": "+w.field+": ")
				}
				if !errors.Is(e, ErrInvalid) {
					t.Errorf("errors.Is(%v, ErrInvalid) = false, want true", e)
				}
			}
		})
	}
}

func TestErrorsError(t *testing.T) {
	errs := Errors{
		{File: "p.yml", Line: 1, Col: 1, Field: "name", Msg: "missing required field"},
		{File: "p.yml", Line: 14, Col: 5, Field: "stages[2].depends_on[0]", Msg: `unknown stage "tset"`},
	}
	want := "p.yml:1:1: name: missing required field\np.yml:14:5: stages[2].depends_on[0]: unknown stage \"tset\""
	if got := errs.Error(); got != want {
		t.Errorf("Errors.Error() = %q, want %q", got, want)
	}
	var e *Error
	if !errors.As(error(errs), &e) || e != errs[0] {
		t.Errorf("errors.As(%v, *Error) = %v, want %v", errs, e, errs[0])
	}
}

func TestParseFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yml")
	bad := filepath.Join(dir, "bad.yml")
	if err := os.WriteFile(good, []byte(full), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("name: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if p, err := ParseFile(good); err != nil || p.Name != "backend-api" {
		t.Errorf("ParseFile(%q) = %+v, %v, want backend-api", good, p, err)
	}
	if _, err := ParseFile(bad); !errors.Is(err, ErrInvalid) || !strings.HasPrefix(err.Error(), bad+":1:1: stages: ") {
		t.Errorf("ParseFile(%q) = %v, want %s:1:1: stages: ...", bad, err, bad)
	}
	missing := filepath.Join(dir, "missing.yml")
	if _, err := ParseFile(missing); !errors.Is(err, os.ErrNotExist) || errors.Is(err, ErrInvalid) {
		t.Errorf("ParseFile(%q) = %v, want an error matching os.ErrNotExist and not ErrInvalid", missing, err)
	}
}

func TestStage(t *testing.T) {
	p, err := Parse("p.yml", []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	if s := p.Stage("test"); s == nil || s.Key != "test" {
		t.Errorf("Stage(%q) = %+v, want the test stage", "test", s)
	}
	if s := p.Stage("nope"); s != nil {
		t.Errorf("Stage(%q) = %+v, want nil", "nope", s)
	}
}

func TestDepsAndDependents(t *testing.T) {
	p, err := Parse("p.yml", []byte(`name: diamond
stages:
  - {key: package, commands: make dist, depends_on: [lint, test]}
  - {key: build, commands: make}
  - {key: lint, commands: make lint, depends_on: build}
  - {key: test, commands: make test, depends_on: build}
`))
	if err != nil {
		t.Fatal(err)
	}
	deps := [][]int{{2, 3}, nil, {1}, {1}}
	dependents := [][]int{nil, {2, 3}, {0}, {0}}
	for i := range p.Stages {
		if got := p.Deps(i); !slices.Equal(got, deps[i]) {
			t.Errorf("Deps(%d) = %v, want %v", i, got, deps[i])
		}
		if got := p.Dependents(i); !slices.Equal(got, dependents[i]) {
			t.Errorf("Dependents(%d) = %v, want %v", i, got, dependents[i])
		}
		if got := p.Index(p.Stages[i].Key); got != i {
			t.Errorf("Index(%s) = %d, want %d", p.Stages[i].Key, got, i)
		}
	}
	// A pipeline built by hand, not prepared, answers the same.
	q := &Pipeline{Stages: slices.Clone(p.Stages)}
	for i := range q.Stages {
		if !slices.Equal(q.Deps(i), deps[i]) || !slices.Equal(q.Dependents(i), dependents[i]) || q.Index(q.Stages[i].Key) != i {
			t.Errorf("unprepared stage %d: deps %v, dependents %v, index %d", i, q.Deps(i), q.Dependents(i), q.Index(q.Stages[i].Key))
		}
	}
}

func TestParseAliasBomb(t *testing.T) {
	src := "name: x\nstages: [{key: a, commands: x}]\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
	for i := 1; i <= 7; i++ {
		src += "a" + strconv.Itoa(i) + ": &a" + strconv.Itoa(i) + " [" + strings.Repeat("*a"+strconv.Itoa(i-1)+", ", 9) + "*a" + strconv.Itoa(i-1) + "]\n"
	}
	_, err := Parse("p.yml", []byte(src))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 || errs[0].Field != "(file)" || !strings.Contains(errs[0].Msg, "aliases are expanded") {
		t.Errorf("Parse(alias bomb) = %v, want one (file) error about aliases", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(full))
	f.Add([]byte("name: x\nstages:\n  - {key: a, commands: x, depends_on: [b]}\n  - {key: b, commands: x, depends_on: [a]}\n"))
	f.Add([]byte("name: x\nstages: [{key: a, commands: x}, {key: b, commands: [y], depends_on: a}]\n"))
	f.Add([]byte("name: x\nenv: &e {A: 1}\nstages: [{key: a, commands: x, env: *e, retry: {exit_status: [1]}, resources: {memory: 1Ki}}]\n"))
	f.Add([]byte("name: x\nstages: [\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("f.yml", data)
		if err != nil {
			if p != nil {
				t.Fatalf("Parse(%q) = %+v, %v, want a nil pipeline with the error", data, p, err)
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) = %v, want a non-empty Errors matching ErrInvalid", data, err)
			}
			return
		}
		keys := make(map[string]bool)
		for _, s := range p.Stages {
			keys[s.Key] = true
		}
		for _, s := range p.Stages {
			for _, d := range s.DependsOn {
				if !keys[d] {
					t.Fatalf("Parse(%q): stage %q depends on unknown %q", data, s.Key, d)
				}
			}
		}
		// With every stage succeeding, every stage becomes ready in turn;
		// the walk stalls on a cycle.
		done := make([]bool, len(p.Stages))
		for n := 0; n < len(p.Stages); {
			progress := false
			for i := range p.Stages {
				if done[i] || slices.ContainsFunc(p.Deps(i), func(d int) bool { return !done[d] }) {
					continue
				}
				done[i], progress = true, true
				n++
			}
			if !progress {
				t.Fatalf("Parse(%q): stages stall after %v: a cycle", data, done)
			}
		}
	})
}

func TestCommandsKeepScalarText(t *testing.T) {
	p, err := Parse("p.yml", []byte("name: x\nstages:\n  - key: a\n    commands: [true, 42, echo hi]\n"))
	if err != nil {
		t.Fatalf("Parse = %v, want no error", err)
	}
	if got, want := p.Stages[0].Commands, []string{"true", "42", "echo hi"}; !slices.Equal(got, want) {
		t.Errorf("commands = %q, want %q", got, want)
	}
}

func TestConcurrencyGroup(t *testing.T) {
	p, err := Parse("p.yml", []byte("name: x\nconcurrency: {group: 'deploy-${WEFT_BRANCH}-${WEFT_REPO}'}\nstages:\n  - key: a\n    commands: [true]\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := p.Concurrency.ExpandGroup(map[string]string{"WEFT_BRANCH": "main", "WEFT_REPO": "acme/api"})
	if got != "deploy-main-acme/api" {
		t.Errorf("ExpandGroup = %q, want deploy-main-acme/api", got)
	}
	_, err = Parse("p.yml", []byte("name: x\nconcurrency: {group: 'deploy-${BRANCH}'}\nstages:\n  - key: a\n    commands: [true]\n"))
	if err == nil || !strings.Contains(err.Error(), "p.yml:2:22: concurrency.group: unknown variable ${BRANCH}") {
		t.Errorf("Parse(unknown group variable) = %v, want an error at p.yml:2:22", err)
	}
}
