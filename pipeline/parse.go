package pipeline

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/weft-ci/weft/subjects"
)

// fileField is the field of problems of the file as a whole.
const fileField = "(file)"

// maxNodes bounds the size of the document with its aliases expanded.
const maxNodes = 1 << 20

var (
	nameRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)
	stageKeyRE = regexp.MustCompile(`^[a-z0-9_-]{1,63}$`)
	envNameRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	memoryRE   = regexp.MustCompile(`^([0-9]+)(Ki|Mi|Gi|Ti|K|M|G|T)?$`)
	yamlLineRE = regexp.MustCompile(`^yaml: line ([0-9]+): (.*)$`)
)

// The known keys of each mapping, in the order they are suggested.
var (
	pipelineFields    = []string{"name", "queue", "priority", "env", "concurrency", "stages"}
	concurrencyFields = []string{"group", "cancel_in_progress"}
	stageFields       = []string{"key", "name", "image", "commands", "depends_on", "queue", "agents", "network", "env", "timeout", "retry", "resources", "artifacts", "cache", "allow_failure"}
	retryFields       = []string{"automatic", "exit_status"}
	resourcesFields   = []string{"cpus", "memory"}
)

var memoryUnits = map[string]int64{
	"":   1,
	"K":  1e3,
	"M":  1e6,
	"G":  1e9,
	"T":  1e12,
	"Ki": 1 << 10,
	"Mi": 1 << 20,
	"Gi": 1 << 30,
	"Ti": 1 << 40,
}

// parser collects the problems of one file while walking its node tree.
type parser struct {
	file string
	errs Errors
	// values is the number of bytes of scalar values in the document
	// with its aliases expanded, saturating above maxMeasured.
	values int
}

// entry is one key/value pair of a mapping, aliases resolved.
type entry struct {
	key, val *yaml.Node
}

// item is one string of a list, with its node and field path.
type item struct {
	s     string
	node  *yaml.Node
	field string
}

// stageInfo keeps the nodes of a stage needed after every stage is read.
type stageInfo struct {
	index   int        // position in the stages sequence
	key     string     // "" when missing or invalid
	keyNode *yaml.Node // nil when missing
	deps    []item     // depends_on entries, parallel to Stage.DependsOn
	stage   Stage
}

func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) {
	p.errs = append(p.errs, &Error{
		File:  p.file,
		Line:  max(n.Line, 1),
		Col:   max(n.Column, 1),
		Field: field,
		Msg:   fmt.Sprintf(format, args...),
	})
}

func (p *parser) fileErrorf(line int, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Line: max(line, 1), Col: 1, Field: fileField, Msg: fmt.Sprintf(format, args...)})
}

// parse reads the first document of data and walks it. The result is only
// meaningful when no problem was recorded.
func (p *parser) parse(data []byte) *Pipeline {
	if len(data) > MaxFileSize {
		p.fileErrorf(1, "the file is %s, over the limit of %s", formatSize(len(data)), formatSize(MaxFileSize))
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.fileErrorf(1, "empty pipeline file")
		} else {
			p.syntaxError(err, data)
		}
		return nil
	}
	root := &doc
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		root = resolve(doc.Content[0])
	}
	if isNull(root) {
		p.fileErrorf(root.Line, "empty pipeline file")
		return nil
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		if len(next.Content) == 1 && !isNull(next.Content[0]) {
			p.fileErrorf(next.Line, "a second YAML document; a pipeline file holds one")
		}
	} else if !errors.Is(err, io.EOF) {
		p.syntaxError(err, data)
	}
	ext := expanded(root, map[*yaml.Node]extent{})
	if ext.nodes > maxNodes {
		p.fileErrorf(1, "more than %d nodes once aliases are expanded", maxNodes)
		return nil
	}
	p.values = ext.bytes
	if root.Kind != yaml.MappingNode {
		p.errorf(root, fileField, "expected a mapping at the top level, got %s", describe(root))
		return nil
	}
	return p.pipeline(root)
}

// syntaxError records a YAML syntax error. yaml.v3 reports the line where
// the enclosing block starts (go-yaml/yaml#542), often lines above the
// mistake, and no column; so the error is placed by re-parsing: at the
// first line from which every longer prefix of the file fails to parse,
// on that line's first non-blank column.
func (p *parser) syntaxError(err error, data []byte) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 1
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	col := 1
	if l, c, ok := locateSyntaxError(data); ok {
		line, col = l, c
	}
	p.errs = append(p.errs, &Error{File: p.file, Line: max(line, 1), Col: col, Field: fileField, Msg: msg})
}

// maxLocateLines bounds the files locateSyntaxError re-parses.
const maxLocateLines = 5000

// locateSyntaxError returns the line and column where data stops being a
// parsable YAML stream: the smallest k such that the first j lines fail to
// parse for every j >= k. It reports false for files too long to search.
func locateSyntaxError(data []byte) (line, col int, ok bool) {
	lines := bytes.SplitAfter(data, []byte("\n"))
	if len(lines) > maxLocateLines {
		return 0, 0, false
	}
	parses := func(n int) bool {
		dec := yaml.NewDecoder(bytes.NewReader(bytes.Join(lines[:n], nil)))
		for {
			var doc yaml.Node
			if err := dec.Decode(&doc); err != nil {
				return errors.Is(err, io.EOF)
			}
		}
	}
	k := len(lines)
	for k > 1 && !parses(k-1) {
		k--
	}
	if parses(k) {
		return 0, 0, false
	}
	text := lines[k-1]
	return k, len(text) - len(bytes.TrimLeft(text, " \t")) + 1, true
}

// extent is the size of a node tree with its aliases expanded.
type extent struct {
	nodes int // nodes, saturating above maxNodes
	bytes int // bytes of scalar values, saturating above maxMeasured
}

func (e extent) plus(o extent) extent {
	return extent{nodes: min(e.nodes+o.nodes, maxNodes+1), bytes: min(e.bytes+o.bytes, maxMeasured+1)}
}

// expanded returns the extent of the tree under n with aliases expanded.
// memo holds the extents already computed.
func expanded(n *yaml.Node, memo map[*yaml.Node]extent) extent {
	if n == nil {
		return extent{}
	}
	if ext, ok := memo[n]; ok {
		return ext
	}
	memo[n] = extent{nodes: maxNodes + 1} // an alias cycle, should yaml ever let one through
	ext := extent{nodes: 1}
	if n.Kind == yaml.ScalarNode {
		ext.bytes = min(len(n.Value), maxMeasured+1)
	}
	ext = ext.plus(expanded(n.Alias, memo))
	for _, c := range n.Content {
		ext = ext.plus(expanded(c, memo))
	}
	memo[n] = ext
	return ext
}

func (p *parser) pipeline(n *yaml.Node) *Pipeline {
	f := p.mapping(n, "", pipelineFields)
	pl := &Pipeline{Queue: subjects.DefaultQueue, Priority: subjects.Normal}
	if e, ok := f["name"]; ok {
		if s, ok := p.str(e.val, "name"); ok {
			if !nameRE.MatchString(s) {
				p.errorf(e.val, "name", "invalid name %q: want 1-128 characters of A-Z, a-z, 0-9, '_', '.' and '-', starting with a letter or digit", s)
			}
			pl.Name = s
		}
	} else {
		p.errorf(n, "name", "missing required field")
	}
	if e, ok := f["queue"]; ok {
		if q, ok := p.queue(e.val, "queue"); ok {
			pl.Queue = q
		}
	}
	if e, ok := f["priority"]; ok {
		if s, ok := p.str(e.val, "priority"); ok {
			if t, err := subjects.ParseTier(s); err != nil {
				p.errorf(e.val, "priority", "%s", reason(err))
			} else {
				pl.Priority = t
			}
		}
	}
	if e, ok := f["env"]; ok {
		pl.Env = p.env(e.val, "env")
	}
	if e, ok := f["concurrency"]; ok {
		pl.Concurrency = p.concurrency(e.val, "concurrency")
	}
	if e, ok := f["stages"]; ok {
		pl.Stages = p.stages(e.val, "stages", pl.Queue)
		var nodes []*yaml.Node
		if e.val.Kind == yaml.SequenceNode && len(e.val.Content) == len(pl.Stages) {
			nodes = e.val.Content
		}
		p.size(pl, e.key, nodes)
	} else {
		p.errorf(n, "stages", "missing required field")
	}
	return pl
}

// size checks pl against the limits (limits.go): the stage count, and the
// expanded size, both reported at the stages key; the commands and the
// environment of each stage, reported at the stage (nodes holds the
// stages' nodes, in order).
func (p *parser) size(pl *Pipeline, at *yaml.Node, nodes []*yaml.Node) {
	if len(pl.Stages) == 0 {
		return
	}
	if len(pl.Stages) > MaxStages {
		p.errorf(at, "stages", "%d stages, over the limit of %d stages per pipeline", len(pl.Stages), MaxStages)
		return
	}
	if p.values > maxMeasured {
		p.errorf(at, "stages", "the expanded pipeline holds more than %s of YAML values (%d stages; YAML aliases are expanded), over the limit of %s",
			formatSize(maxMeasured), len(pl.Stages), formatSize(MaxSize))
		return
	}
	for i := range pl.Stages {
		st := &pl.Stages[i]
		n := at
		if i < len(nodes) {
			n = nodes[i]
		}
		if c := commandsSize(st); c > MaxCommandsSize {
			p.errorf(n, index("stages", i)+".commands", "the commands are %s (YAML aliases are expanded), over the limit of %s per stage",
				formatSize(c), formatSize(MaxCommandsSize))
		}
		if e := envSize(pl, st); e > MaxEnvSize {
			p.errorf(n, index("stages", i)+".env", "the environment is %s (the pipeline's env with the stage's own; YAML aliases are expanded), over the limit of %s per stage",
				formatSize(e), formatSize(MaxEnvSize))
		}
	}
	if n, ok := expandedSize(pl); ok && n > MaxSize {
		p.errorf(at, "stages", "the expanded pipeline is %s (%d stages; YAML aliases are expanded), over the limit of %s",
			formatSize(n), len(pl.Stages), formatSize(MaxSize))
	}
}

func (p *parser) concurrency(n *yaml.Node, field string) *Concurrency {
	f := p.mapping(n, field, concurrencyFields)
	if f == nil {
		return nil
	}
	c := &Concurrency{}
	if e, ok := f["group"]; ok {
		if s, ok := p.str(e.val, field+".group"); ok {
			if strings.TrimSpace(s) == "" {
				p.errorf(e.val, field+".group", "must not be empty")
			}
			for _, m := range groupVarRE.FindAllStringSubmatch(s, -1) {
				if !slices.Contains(GroupVars, m[1]) {
					p.errorf(e.val, field+".group", "unknown variable ${%s}: a group may use ${%s}", m[1], strings.Join(GroupVars, "}, ${"))
				}
			}
			c.Group = s
		}
	} else {
		p.errorf(n, field+".group", "missing required field")
	}
	if e, ok := f["cancel_in_progress"]; ok {
		c.CancelInProgress, _ = p.boolean(e.val, field+".cancel_in_progress")
	}
	return c
}

func (p *parser) stages(n *yaml.Node, field, defaultQueue string) []Stage {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, field, "expected a sequence of stages, got %s", describe(n))
		return nil
	}
	if len(n.Content) == 0 {
		p.errorf(n, field, "must have at least one stage")
		return nil
	}
	infos := make([]*stageInfo, 0, len(n.Content))
	for i, c := range n.Content {
		if info := p.stage(resolve(c), index(field, i), i, defaultQueue); info != nil {
			infos = append(infos, info)
		}
	}
	p.graph(infos, field)
	stages := make([]Stage, len(infos))
	for i, info := range infos {
		stages[i] = info.stage
	}
	return stages
}

func (p *parser) stage(n *yaml.Node, field string, i int, defaultQueue string) *stageInfo {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, field, "expected a mapping (a stage), got %s", describe(n))
		return nil
	}
	f := p.mapping(n, field, stageFields)
	info := &stageInfo{index: i, stage: Stage{Queue: defaultQueue}}
	st := &info.stage
	sub := func(name string) string { return field + "." + name }

	if e, ok := f["key"]; ok {
		if s, ok := p.str(e.val, sub("key")); ok {
			st.Key = s
			if stageKeyRE.MatchString(s) {
				info.key, info.keyNode = s, e.val
			} else {
				p.errorf(e.val, sub("key"), "invalid stage key %q: want 1-63 characters of a-z, 0-9, '_' and '-'", s)
			}
		}
	} else {
		p.errorf(n, sub("key"), "missing required field")
	}
	if e, ok := f["name"]; ok {
		st.Name, _ = p.str(e.val, sub("name"))
	}
	if e, ok := f["image"]; ok {
		if s, ok := p.str(e.val, sub("image")); ok {
			if strings.TrimSpace(s) == "" {
				p.errorf(e.val, sub("image"), "must not be empty; omit image to run on the host")
			}
			st.Image = s
		}
	}
	if e, ok := f["commands"]; ok {
		if e.val.Kind == yaml.SequenceNode && len(e.val.Content) == 0 {
			p.errorf(e.val, sub("commands"), "must have at least one command")
		}
		for _, c := range p.commandList(e.val, sub("commands")) {
			if strings.TrimSpace(c.s) == "" {
				p.errorf(c.node, c.field, "empty command")
			}
			st.Commands = append(st.Commands, c.s)
		}
	} else {
		p.errorf(n, sub("commands"), "missing required field")
	}
	if e, ok := f["depends_on"]; ok {
		info.deps = p.stringList(e.val, sub("depends_on"), "stage keys")
		for _, d := range info.deps {
			st.DependsOn = append(st.DependsOn, d.s)
		}
	}
	if e, ok := f["queue"]; ok {
		if q, ok := p.queue(e.val, sub("queue")); ok {
			st.Queue = q
		}
	}
	if e, ok := f["agents"]; ok {
		st.Agents = p.agentLabels(e.val, sub("agents"))
	}
	if e, ok := f["network"]; ok {
		if s, ok := p.str(e.val, sub("network")); ok {
			if s != NetworkHost {
				p.errorf(e.val, sub("network"), "%q: the only network a stage may ask for is host (the agent's own); omit it for the agent's default", s)
			}
			st.Network = s
		}
	}
	if e, ok := f["env"]; ok {
		st.Env = p.env(e.val, sub("env"))
	}
	if e, ok := f["timeout"]; ok {
		st.Timeout = p.timeout(e.val, sub("timeout"))
	}
	if e, ok := f["retry"]; ok {
		st.Retry = p.retry(e.val, sub("retry"))
	}
	if e, ok := f["resources"]; ok {
		st.Resources = p.resources(e.val, sub("resources"))
	}
	if e, ok := f["artifacts"]; ok {
		st.Artifacts = p.artifacts(e.val, sub("artifacts"))
	}
	if e, ok := f["cache"]; ok {
		st.Cache = p.cache(e.val, sub("cache"), st.Image)
	}
	if e, ok := f["allow_failure"]; ok {
		st.AllowFailure, _ = p.boolean(e.val, sub("allow_failure"))
	}
	return info
}

// graph checks stage keys for duplicates and depends_on for unknown stages,
// self-dependencies, repeated entries and cycles.
func (p *parser) graph(infos []*stageInfo, field string) {
	byKey := make(map[string]int, len(infos)) // key -> position in infos
	keys := make([]string, 0, len(infos))
	for i, info := range infos {
		if info.key == "" {
			continue
		}
		if first, dup := byKey[info.key]; dup {
			p.errorf(info.keyNode, index(field, info.index)+".key", "duplicate stage key %q (first at line %d)", info.key, infos[first].keyNode.Line)
			continue
		}
		byKey[info.key] = i
		keys = append(keys, info.key)
	}

	// edges[i] are the valid dependencies of infos[i], in file order.
	type edge struct {
		to  int
		dep item
	}
	edges := make([][]edge, len(infos))
	for i, info := range infos {
		seen := make(map[string]bool, len(info.deps))
		for _, dep := range info.deps {
			switch to, known := byKey[dep.s]; {
			case seen[dep.s]:
				p.errorf(dep.node, dep.field, "duplicate dependency %q", dep.s)
			case info.key != "" && dep.s == info.key:
				p.errorf(dep.node, dep.field, "stage %q depends on itself", dep.s)
			case !known:
				p.errorf(dep.node, dep.field, "unknown stage %q%s", dep.s, suggest(dep.s, keys))
			case info.key != "" && byKey[info.key] == i:
				edges[i] = append(edges[i], edge{to: to, dep: dep})
			}
			seen[dep.s] = true
		}
	}

	// A depth-first search in file order; every back edge closes a cycle.
	const (
		unvisited = iota
		onStack
		finished
	)
	state := make([]int, len(infos))
	var stack []int
	var visit func(u int)
	visit = func(u int) {
		state[u] = onStack
		stack = append(stack, u)
		for _, e := range edges[u] {
			switch state[e.to] {
			case unvisited:
				visit(e.to)
			case onStack:
				start := len(stack) - 1
				for stack[start] != e.to {
					start--
				}
				path := []string{infos[u].key}
				for _, v := range stack[start:] {
					path = append(path, infos[v].key)
				}
				p.errorf(e.dep.node, e.dep.field, "cycle: %s", strings.Join(path, " -> "))
			}
		}
		stack = stack[:len(stack)-1]
		state[u] = finished
	}
	for u := range infos {
		if state[u] == unvisited {
			visit(u)
		}
	}
}

func (p *parser) retry(n *yaml.Node, field string) Retry {
	var r Retry
	f := p.mapping(n, field, retryFields)
	if e, ok := f["automatic"]; ok {
		if v, ok := p.integer(e.val, field+".automatic"); ok {
			if v < 0 || v > 10 {
				p.errorf(e.val, field+".automatic", "must be between 0 and 10, got %d", v)
			}
			r.Automatic = int(v)
		}
	}
	if e, ok := f["exit_status"]; ok {
		at := field + ".exit_status"
		if e.val.Kind != yaml.SequenceNode {
			p.errorf(e.val, at, "expected a sequence of exit statuses, got %s", describe(e.val))
		} else {
			for j, c := range e.val.Content {
				c = resolve(c)
				if v, ok := p.integer(c, index(at, j)); ok {
					if v < 1 || v > 255 {
						p.errorf(c, index(at, j), "exit status must be between 1 and 255, got %d", v)
					}
					r.ExitStatus = append(r.ExitStatus, int(v))
				}
			}
		}
	}
	return r
}

func (p *parser) resources(n *yaml.Node, field string) Resources {
	var r Resources
	f := p.mapping(n, field, resourcesFields)
	if e, ok := f["cpus"]; ok {
		at := field + ".cpus"
		switch tag := e.val.ShortTag(); {
		case e.val.Kind != yaml.ScalarNode || (tag != "!!int" && tag != "!!float"):
			p.errorf(e.val, at, "expected a number, got %s", describe(e.val))
		case e.val.Decode(&r.CPUs) != nil || !(r.CPUs > 0) || math.IsInf(r.CPUs, 0):
			p.errorf(e.val, at, "must be a positive number, got %s", e.val.Value)
		}
	}
	if e, ok := f["memory"]; ok {
		r.Memory = p.memory(e.val, field+".memory")
	}
	return r
}

func (p *parser) memory(n *yaml.Node, field string) int64 {
	tag := n.ShortTag()
	if n.Kind != yaml.ScalarNode || (tag != "!!int" && tag != "!!str") {
		p.errorf(n, field, "expected a number of bytes or a quantity such as 512Mi, got %s", describe(n))
		return 0
	}
	if tag == "!!int" {
		var v int64
		if err := n.Decode(&v); err != nil || v <= 0 {
			p.errorf(n, field, "must be a positive number of bytes, got %s", n.Value)
		}
		return v
	}
	m := memoryRE.FindStringSubmatch(n.Value)
	if m == nil {
		p.errorf(n, field, "invalid memory %q: want a positive integer, optionally followed by Ki, Mi, Gi, Ti, K, M, G or T", n.Value)
		return 0
	}
	v, err := strconv.ParseInt(m[1], 10, 64)
	unit := memoryUnits[m[2]]
	if err != nil || v > math.MaxInt64/unit {
		p.errorf(n, field, "memory %q is too large", n.Value)
		return 0
	}
	if v == 0 {
		p.errorf(n, field, "memory must be positive, got %q", n.Value)
	}
	return v * unit
}

func (p *parser) timeout(n *yaml.Node, field string) time.Duration {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		p.errorf(n, field, "expected a duration such as 10m or 1h30m, got %s", describe(n))
		return 0
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil {
		p.errorf(n, field, "invalid duration %q: want a number with a unit such as 90s, 10m or 1h30m", n.Value)
		return 0
	}
	if d <= 0 {
		p.errorf(n, field, "must be positive, got %s", n.Value)
	}
	return d
}

func (p *parser) artifacts(n *yaml.Node, field string) []string {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, field, "expected a sequence of glob patterns, got %s", describe(n))
		return nil
	}
	var pats []string
	for j, c := range n.Content {
		c = resolve(c)
		at := index(field, j)
		s, ok := p.str(c, at)
		if !ok {
			continue
		}
		pats = append(pats, s)
		switch {
		case strings.TrimSpace(s) == "":
			p.errorf(c, at, "empty artifact pattern")
		case strings.HasPrefix(s, "/") || strings.HasPrefix(s, `\`):
			p.errorf(c, at, "artifact pattern %q must be a relative path", s)
		case slices.Contains(strings.FieldsFunc(s, isSlash), ".."):
			p.errorf(c, at, "artifact pattern %q must not contain a \"..\" path element", s)
		default:
			if _, err := path.Match(s, ""); err != nil {
				p.errorf(c, at, "invalid glob pattern %q", s)
			}
		}
	}
	return pats
}

func isSlash(r rune) bool { return r == '/' || r == '\\' }

func (p *parser) env(n *yaml.Node, field string) map[string]string {
	f := p.mapping(n, field, nil)
	if f == nil {
		return nil
	}
	env := make(map[string]string, len(f))
	for name, e := range f {
		at := field + "." + name
		switch {
		case !envNameRE.MatchString(name):
			p.errorf(e.key, at, "invalid environment variable name %q: want [A-Za-z_][A-Za-z0-9_]*", name)
		case strings.HasPrefix(name, "WEFT_"):
			p.errorf(e.key, at, "environment variable %q is reserved: names starting with WEFT_ are set by weft", name)
		}
		switch {
		case e.val.Kind != yaml.ScalarNode:
			p.errorf(e.val, at, "expected a scalar value, got %s", describe(e.val))
		case isNull(e.val):
			p.errorf(e.val, at, `expected a value, got null (write "" for an empty value)`)
		default:
			env[name] = e.val.Value
		}
	}
	return env
}

// agentLabels reads a stage's agents: a mapping of at most
// subjects.MaxLabels labels an agent must have.
func (p *parser) agentLabels(n *yaml.Node, field string) map[string]string {
	f := p.mapping(n, field, nil)
	if f == nil {
		return nil
	}
	if len(f) > subjects.MaxLabels {
		p.errorf(n, field, "%d labels, at most %d", len(f), subjects.MaxLabels)
		return nil
	}
	labels := make(map[string]string, len(f))
	for name, e := range f {
		at := field + "." + name
		if e.val.Kind != yaml.ScalarNode || isNull(e.val) {
			p.errorf(e.val, at, "expected a label value, got %s", describe(e.val))
			continue
		}
		if err := subjects.ValidateLabel(name, e.val.Value); err != nil {
			p.errorf(e.key, at, "%s", strings.TrimPrefix(err.Error(), subjects.ErrInvalidName.Error()+": "))
			continue
		}
		labels[name] = e.val.Value
	}
	return labels
}

func (p *parser) queue(n *yaml.Node, field string) (string, bool) {
	s, ok := p.str(n, field)
	if !ok {
		return "", false
	}
	if err := subjects.ValidateQueue(s); err != nil {
		p.errorf(n, field, "%s", reason(err))
		return "", false
	}
	return s, true
}

// mapping checks that n is a mapping and returns its entries by key. It
// records a type error (returning nil), keys that are not scalars, merge
// keys, duplicate keys and, unless known is nil, keys not in known.
func (p *parser) mapping(n *yaml.Node, field string, known []string) map[string]entry {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, field, "expected a mapping, got %s", describe(n))
		return nil
	}
	f := make(map[string]entry, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, cmp.Or(field, fileField), "expected a string key, got %s", describe(k))
			continue
		}
		at := k.Value
		if field != "" {
			at = field + "." + k.Value
		}
		if k.ShortTag() == "!!merge" {
			p.errorf(k, at, "merge keys (<<) are not supported")
			continue
		}
		if first, dup := f[k.Value]; dup {
			p.errorf(k, at, "duplicate key %q (first at line %d)", k.Value, first.key.Line)
			continue
		}
		if known != nil && !slices.Contains(known, k.Value) {
			p.errorf(k, at, "unknown field %q%s", k.Value, suggest(k.Value, known))
			continue
		}
		f[k.Value] = entry{key: k, val: v}
	}
	return f
}

// str returns the value of n, which must be a string scalar.
func (p *parser) str(n *yaml.Node, field string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		p.errorf(n, field, "expected a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

// stringList returns the strings of sequence n, or n's value as the only
// element if it is a string; what names the elements in the type error.
// Elements of the wrong type are recorded and left out.
func (p *parser) stringList(n *yaml.Node, field, what string) []item {
	return p.list(n, field, what, p.str)
}

// commandList is stringList for commands: any non-null scalar is a command
// in its literal text, so `commands: [true]` runs true.
func (p *parser) commandList(n *yaml.Node, field string) []item {
	return p.list(n, field, "commands", p.text)
}

// text returns the literal text of n, which must be a non-null scalar.
func (p *parser) text(n *yaml.Node, field string) (string, bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		p.errorf(n, field, "expected a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) list(n *yaml.Node, field, what string, elem func(*yaml.Node, string) (string, bool)) []item {
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
		return []item{{s: n.Value, node: n, field: field}}
	}
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, field, "expected a sequence of %s or a single string, got %s", what, describe(n))
		return nil
	}
	items := make([]item, 0, len(n.Content))
	for j, c := range n.Content {
		c = resolve(c)
		at := index(field, j)
		if s, ok := elem(c, at); ok {
			items = append(items, item{s: s, node: c, field: at})
		}
	}
	return items
}

// integer returns the value of n, which must be an integer scalar.
func (p *parser) integer(n *yaml.Node, field string) (int64, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		p.errorf(n, field, "expected an integer, got %s", describe(n))
		return 0, false
	}
	var v int64
	if err := n.Decode(&v); err != nil {
		p.errorf(n, field, "integer %s is out of range", n.Value)
		return 0, false
	}
	return v, true
}

// boolean returns the value of n, which must be a boolean scalar.
func (p *parser) boolean(n *yaml.Node, field string) (bool, bool) {
	var v bool
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || n.Decode(&v) != nil {
		p.errorf(n, field, "expected true or false, got %s", describe(n))
		return false, false
	}
	return v, true
}

// resolve follows aliases to the node they stand for.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// describe names the YAML type of n for type errors.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a sequence"
	case yaml.ScalarNode:
		switch tag := n.ShortTag(); tag {
		case "!!str":
			return "a string"
		case "!!int":
			return "an integer"
		case "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		case "!!null":
			return "null"
		case "!!timestamp":
			return "a timestamp"
		case "!!binary":
			return "binary data"
		default:
			return "a value tagged " + tag
		}
	}
	return "nothing"
}

func index(field string, i int) string { return field + "[" + strconv.Itoa(i) + "]" }

// reason returns the message of a subjects validation error without the
// sentinel's prefix.
func reason(err error) string {
	return strings.TrimPrefix(err.Error(), subjects.ErrInvalidName.Error()+": ")
}

// suggest returns `, did you mean "x"?` for the candidate closest to s within
// edit distance 2, or "".
func suggest(s string, candidates []string) string {
	best, bestDist := "", 3
	for _, c := range candidates {
		if d := distance(s, c, bestDist); d < bestDist {
			best, bestDist = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(", did you mean %q?", best)
}

// distance returns the Levenshtein distance of a and b, or limit if it is
// at least limit.
func distance(a, b string, limit int) int {
	if len(a)-len(b) >= limit || len(b)-len(a) >= limit {
		return limit
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return min(prev[len(b)], limit)
}

// ValidEnvName reports whether name can be an environment variable's
// name, as an env: key must be.
func ValidEnvName(name string) bool { return envNameRE.MatchString(name) }
