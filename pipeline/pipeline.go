package pipeline

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/weft-ci/weft/subjects"
)

// Pipeline is a parsed, validated pipeline file. It is stored inside run
// documents as JSON, so its JSON form is part of the wire contract.
type Pipeline struct {
	// Name names the pipeline.
	Name string `json:"name"`
	// Queue is the agent queue of stages that name none; Parse fills it
	// with subjects.DefaultQueue when the file has none.
	Queue string `json:"queue"`
	// Priority is the tier the run's jobs are published on unless a
	// trigger overrides it; Parse fills it with subjects.Normal when the
	// file has none.
	Priority subjects.Tier `json:"priority"`
	// Env is set for every stage; a stage's own Env overrides it.
	Env map[string]string `json:"env,omitempty"`
	// Concurrency, when set, names the concurrency group the dispatcher
	// admits the run under.
	Concurrency *Concurrency `json:"concurrency,omitempty"`
	// Stages are the stages in file order.
	Stages []Stage `json:"stages"`

	// index maps a stage key to its position in Stages, and dependents
	// a position to the positions of the stages that depend on it; both
	// built by Prepare.
	index      map[string]int
	dependents [][]int
	deps       [][]int
}

// Concurrency is a pipeline's concurrency group.
type Concurrency struct {
	// Group names the group; it may contain ${WEFT_*} references, which
	// the dispatcher expands.
	Group string `json:"group"`
	// CancelInProgress cancels the group's run in progress when a new one
	// is admitted, instead of making the new one wait.
	CancelInProgress bool `json:"cancel_in_progress,omitempty"`
}

// NetworkHost is the Network of a stage that opts into the agent's own
// network (network: host).
const NetworkHost = "host"

// Stage is one node of the pipeline's DAG.
type Stage struct {
	// Key identifies the stage within the pipeline and in subjects.
	Key string `json:"key"`
	// Name is an optional display name.
	Name string `json:"name,omitempty"`
	// Image is the container image; empty runs the commands on the host.
	Image string `json:"image,omitempty"`
	// Commands run in order; the first failure fails the stage.
	Commands []string `json:"commands"`
	// DependsOn lists the keys of the stages this one waits for.
	DependsOn []string `json:"depends_on,omitempty"`
	// Queue is the agent queue; Parse fills it with the pipeline's Queue
	// when the stage has none.
	Queue string `json:"queue"`
	// Agents are the labels an agent must have to run the stage
	// (weft agent --label k=v); none is any agent of the queue.
	Agents map[string]string `json:"agents,omitempty"`
	// Network is NetworkHost for a stage that shares the agent's network
	// (its loopback and the ports on it); empty is the agent's default,
	// a network of the stage's own on agents that isolate stages.
	Network string `json:"network,omitempty"`
	// Env is added to the pipeline's Env, overriding it.
	Env map[string]string `json:"env,omitempty"`
	// Timeout bounds one attempt; zero is no limit.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Retry says when a failed attempt is retried.
	Retry Retry `json:"retry,omitzero"`
	// Resources are the limits of the stage's container.
	Resources Resources `json:"resources,omitzero"`
	// Artifacts are relative glob patterns uploaded after success and
	// restored for dependents.
	Artifacts []string `json:"artifacts,omitempty"`
	// Cache is restored before the stage's first command and saved
	// after it succeeds; nil is none.
	Cache *Cache `json:"cache,omitempty"`
	// AllowFailure lets dependents run when this stage fails.
	AllowFailure bool `json:"allow_failure,omitempty"`
}

// Retry says when a failed stage attempt is retried.
type Retry struct {
	// Automatic is how many times a failed attempt is retried (0 to 10).
	Automatic int `json:"automatic,omitempty"`
	// ExitStatus, when not empty, limits retries to these exit statuses.
	ExitStatus []int `json:"exit_status,omitempty"`
}

// Resources are the limits of a stage's container; zero is no limit.
type Resources struct {
	// CPUs is the number of CPUs, possibly fractional.
	CPUs float64 `json:"cpus,omitempty"`
	// Memory is the memory limit in bytes.
	Memory int64 `json:"memory,omitempty"`
}

// ErrInvalid is matched (with errors.Is) by every validation problem Parse
// and ParseFile return.
var ErrInvalid = errors.New("pipeline: invalid pipeline")

// Error is one validation problem of a pipeline file.
type Error struct {
	// File is the file name given to Parse.
	File string
	// Line and Col are the 1-based position of the offending YAML node.
	Line, Col int
	// Field is the path of the offending field, such as name, env.FOO,
	// stages[2].key or stages[0].retry.exit_status[1]; it is "(file)" for
	// problems of the file as a whole (YAML syntax, empty file).
	Field string
	// Msg says what is wrong.
	Msg string
}

// Error renders the problem as "FILE:LINE:COL: FIELD: MESSAGE".
func (e *Error) Error() string {
	return e.File + ":" + strconv.Itoa(e.Line) + ":" + strconv.Itoa(e.Col) + ": " + e.Field + ": " + e.Msg
}

// Is reports whether target is ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// Errors is the list of problems of one pipeline file, sorted by line then
// column.
type Errors []*Error

// Error renders one problem per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the problems, so that errors.Is(err, ErrInvalid) and
// errors.As(err, new(*Error)) see them.
func (es Errors) Unwrap() []error {
	errs := make([]error, len(es))
	for i, e := range es {
		errs[i] = e
	}
	return errs
}

// Parse parses and validates a pipeline file; file is used only in error
// messages. On any problem, including an expanded size over MaxSize, it
// returns a nil *Pipeline and an Errors value holding every problem
// found, each matching ErrInvalid.
func Parse(file string, data []byte) (*Pipeline, error) {
	p := &parser{file: file}
	pl := p.parse(data)
	if len(p.errs) > 0 {
		slices.SortStableFunc(p.errs, func(a, b *Error) int {
			if a.Line != b.Line {
				return a.Line - b.Line
			}
			return a.Col - b.Col
		})
		return nil, p.errs
	}
	pl.Prepare()
	return pl, nil
}

// ParseFile reads the file at path and parses it with Parse, naming it path
// in error messages. A read error is returned wrapped, and does not match
// ErrInvalid.
func ParseFile(path string) (*Pipeline, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pipeline file: %w", err)
	}
	return Parse(path, data)
}

// Prepare indexes the stages by key, so that Stage and Index take
// constant time; Parse calls it. Call it again after changing stage keys,
// and before sharing the pipeline between goroutines.
func (p *Pipeline) Prepare() {
	p.index = make(map[string]int, len(p.Stages))
	for i := range p.Stages {
		p.index[p.Stages[i].Key] = i
	}
	p.dependents = make([][]int, len(p.Stages))
	p.deps = make([][]int, len(p.Stages))
	for i, st := range p.Stages {
		for _, d := range st.DependsOn {
			if j, ok := p.index[d]; ok {
				p.dependents[j] = append(p.dependents[j], i)
				p.deps[i] = append(p.deps[i], j)
			}
		}
	}
}

// Deps returns the positions in Stages of the dependencies of the stage
// at position i.
func (p *Pipeline) Deps(i int) []int {
	if p.deps == nil {
		var out []int
		for _, d := range p.Stages[i].DependsOn {
			if j := p.Index(d); j >= 0 {
				out = append(out, j)
			}
		}
		return out
	}
	return p.deps[i]
}

// Ancestors returns the positions in Stages of the stages the stage at
// position i depends on, directly or not, in file order.
func (p *Pipeline) Ancestors(i int) []int {
	deps := p.Deps(i)
	if len(deps) == 0 {
		return nil
	}
	seen := make([]bool, len(p.Stages))
	stack := slices.Clone(deps)
	for len(stack) > 0 {
		j := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[j] {
			continue
		}
		seen[j] = true
		stack = append(stack, p.Deps(j)...)
	}
	var out []int
	for j, ok := range seen {
		if ok {
			out = append(out, j)
		}
	}
	return out
}

// Dependents returns the positions in Stages of the stages that depend
// directly on the stage at position i.
func (p *Pipeline) Dependents(i int) []int {
	if p.dependents == nil {
		var out []int
		for j, st := range p.Stages {
			if slices.Contains(st.DependsOn, p.Stages[i].Key) {
				out = append(out, j)
			}
		}
		return out
	}
	return p.dependents[i]
}

// Index returns the position of the stage with key in Stages, or -1.
func (p *Pipeline) Index(key string) int {
	if p.index != nil {
		if i, ok := p.index[key]; ok && i < len(p.Stages) && p.Stages[i].Key == key {
			return i
		}
		return -1
	}
	for i := range p.Stages {
		if p.Stages[i].Key == key {
			return i
		}
	}
	return -1
}

// Stage returns the stage with key, or nil if there is none.
func (p *Pipeline) Stage(key string) *Stage {
	if i := p.Index(key); i >= 0 {
		return &p.Stages[i]
	}
	return nil
}

// GroupVars are the variables a concurrency group may reference as ${NAME}.
var GroupVars = []string{"WEFT_BRANCH", "WEFT_COMMIT", "WEFT_PIPELINE", "WEFT_REPO"}

var groupVarRE = regexp.MustCompile(`\$\{([A-Za-z0-9_]*)\}`)

// ExpandGroup returns the group with each ${NAME} replaced by vars[NAME].
func (c *Concurrency) ExpandGroup(vars map[string]string) string {
	return groupVarRE.ReplaceAllStringFunc(c.Group, func(ref string) string {
		return vars[ref[2:len(ref)-1]]
	})
}

// JobQueue returns the queue the stage's jobs go to: its queue, or the
// label queue of its agent labels (subjects.LabelQueue).
func (s *Stage) JobQueue() string { return subjects.LabelQueue(s.Queue, s.Agents) }
