package pipeline

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"unicode"

	"gopkg.in/yaml.v3"
)

// Cache is a stage's cache: the paths restored before its first command
// from the entry of Key, or else from the newest entry whose key starts
// with one of RestoreKeys, and saved after it succeeds when no entry of
// Key exists yet. Entries belong to the run's repository.
//
// Key and RestoreKeys are templates (ExpandKey): ${hash:GLOB[,GLOB...]} is
// the hex SHA-256 of the workspace files the globs match, ${arch} and
// ${os} are the agent's GOARCH and GOOS.
type Cache struct {
	// Key names the entry saved and looked for first.
	Key string `json:"key"`
	// RestoreKeys are key prefixes tried in order when Key has no entry;
	// the newest entry of the first that matches any is restored.
	RestoreKeys []string `json:"restore_keys,omitempty"`
	// Paths are what the entry holds: relative to the workspace, or
	// under the home directory of a host stage when they start with ~/.
	Paths []string `json:"paths"`
}

// Bounds of a cache specification.
const (
	// MaxCachePaths bounds the paths of one stage's cache.
	MaxCachePaths = 32
	// MaxCacheKeyBytes bounds a cache key, expanded.
	MaxCacheKeyBytes = 512
	// MaxRestoreKeys bounds a stage's restore keys.
	MaxRestoreKeys = 16
)

var cacheFields = []string{"key", "restore_keys", "paths"}

// cache parses a stage's cache mapping; image says whether the stage runs
// in a container, whose home directory the agent cannot reach.
func (p *parser) cache(n *yaml.Node, field, image string) *Cache {
	f := p.mapping(n, field, cacheFields)
	if f == nil {
		return nil
	}
	c := &Cache{}
	if e, ok := f["key"]; ok {
		if s, ok := p.str(e.val, field+".key"); ok {
			c.Key = s
			p.cacheKey(e.val, field+".key", s)
		}
	} else {
		p.errorf(n, field+".key", "missing required field")
	}
	if e, ok := f["restore_keys"]; ok {
		items := p.stringList(e.val, field+".restore_keys", "key prefixes")
		if len(items) > MaxRestoreKeys {
			p.errorf(e.val, field+".restore_keys", "%d restore keys, over the limit of %d", len(items), MaxRestoreKeys)
		}
		for _, it := range items {
			c.RestoreKeys = append(c.RestoreKeys, it.s)
			p.cacheKey(it.node, it.field, it.s)
		}
	}
	if e, ok := f["paths"]; ok {
		items := p.stringList(e.val, field+".paths", "paths")
		if len(items) == 0 {
			p.errorf(e.val, field+".paths", "must have at least one path")
		}
		if len(items) > MaxCachePaths {
			p.errorf(e.val, field+".paths", "%d paths, over the limit of %d", len(items), MaxCachePaths)
		}
		for _, it := range items {
			if msg := cachePathProblem(it.s, image); msg != "" {
				p.errorf(it.node, it.field, "%s", msg)
				continue
			}
			c.Paths = append(c.Paths, it.s)
		}
	} else {
		p.errorf(n, field+".paths", "missing required field")
	}
	return c
}

// cacheKey records the problems of a key template.
func (p *parser) cacheKey(n *yaml.Node, field, s string) {
	switch {
	case strings.TrimSpace(s) == "":
		p.errorf(n, field, "empty cache key")
	case len(s) > MaxCacheKeyBytes:
		p.errorf(n, field, "cache key of %d bytes, over the limit of %d", len(s), MaxCacheKeyBytes)
	case strings.ContainsFunc(s, unicode.IsControl):
		p.errorf(n, field, "cache key %q holds a control character", s)
	default:
		if _, err := ExpandKey(s, func(string, string) (string, error) { return "", nil }); err != nil {
			p.errorf(n, field, "%v", err)
		}
	}
}

// cachePathProblem says what is wrong with a cache path, or "".
func cachePathProblem(s, image string) string {
	rel, home := CachePath(s)
	switch {
	case strings.TrimSpace(s) == "":
		return "empty cache path"
	case home && image != "":
		return fmt.Sprintf("cache path %q is in the home directory, which a container stage's agent cannot reach: use a path in the workspace (and point the tool there, e.g. GOCACHE)", s)
	case strings.HasPrefix(rel, "/") || strings.HasPrefix(rel, `\`):
		return fmt.Sprintf("cache path %q must be relative to the workspace or start with ~/", s)
	case slices.Contains(strings.FieldsFunc(rel, isSlash), ".."):
		return fmt.Sprintf("cache path %q must not contain a \"..\" path element", s)
	case strings.ContainsAny(rel, "*?[{"):
		return fmt.Sprintf("cache path %q: cache paths are files or directories, not globs", s)
	}
	return ""
}

// CachePath splits a cache path into its place: home reports a path
// under the home directory (~ or ~/...), and rel is the path relative
// to the home directory or the workspace, "." for the directory itself.
func CachePath(s string) (rel string, home bool) {
	if s == "~" {
		return ".", true
	}
	if r, ok := strings.CutPrefix(s, "~/"); ok {
		return cleanRel(r), true
	}
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, `\`) {
		return s, false
	}
	return cleanRel(s), false
}

func cleanRel(s string) string {
	return path.Clean(strings.ReplaceAll(s, `\`, "/"))
}

// ExpandKey expands the ${...} references of a cache key template with
// value, which is called as value("hash", "go.sum"), value("arch", "")
// or value("os", ""). $$ is a literal $. An unknown reference, a missing
// or unexpected argument, or an unclosed ${ is an error naming it.
func ExpandKey(tpl string, value func(name, arg string) (string, error)) (string, error) {
	var b strings.Builder
	for i := 0; i < len(tpl); i++ {
		c := tpl[i]
		if c != '$' {
			b.WriteByte(c)
			continue
		}
		if i+1 < len(tpl) && tpl[i+1] == '$' {
			b.WriteByte('$')
			i++
			continue
		}
		if i+1 >= len(tpl) || tpl[i+1] != '{' {
			b.WriteByte('$')
			continue
		}
		end := strings.IndexByte(tpl[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("cache key %q: unclosed ${", tpl)
		}
		ref := tpl[i+2 : i+end]
		name, arg, hasArg := strings.Cut(ref, ":")
		switch name {
		case "hash":
			if strings.TrimSpace(arg) == "" {
				return "", fmt.Errorf("cache key %q: ${hash:FILES} needs files or globs, as in ${hash:go.sum}", tpl)
			}
		case "arch", "os":
			if hasArg {
				return "", fmt.Errorf("cache key %q: ${%s} takes no argument", tpl, name)
			}
		default:
			return "", fmt.Errorf("cache key %q: unknown reference ${%s}: want ${hash:FILES}, ${arch} or ${os}", tpl, ref)
		}
		v, err := value(name, arg)
		if err != nil {
			return "", fmt.Errorf("cache key %q: ${%s}: %w", tpl, ref, err)
		}
		b.WriteString(v)
		i += end
	}
	return b.String(), nil
}
