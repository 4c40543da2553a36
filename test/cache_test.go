package test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/objectstore"
	"github.com/weft-ci/weft/wire"
)

// hasLine reports whether a line holds every one of parts.
func hasLine(lines []string, parts ...string) bool {
	for _, l := range lines {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(l, p)
		}
		if all {
			return true
		}
	}
	return false
}

func mustSucceed(t *testing.T, r *wire.Run, updates []client.Update) {
	t.Helper()
	if r.State == wire.RunSucceeded {
		return
	}
	for _, st := range r.Stages {
		t.Logf("stage %s: %s %s %s", st.Key, st.State, st.Category, st.Message)
		for _, l := range stageLines(updates)[st.Key] {
			t.Logf("  %s| %s", st.Key, l)
		}
	}
	t.Fatalf("run %s, want succeeded", r.State)
}

// cachePipeline builds a pipeline whose deps stage caches vendor/ in the
// workspace and .toolcache in its home, keyed by the hash of the lock
// file an earlier stage writes.
func cachePipeline(lock, home string) string {
	return fmt.Sprintf(`name: cached
stages:
  - key: lock
    commands: ["echo %s > lock.txt"]
    artifacts: [lock.txt]
  - key: deps
    depends_on: [lock]
    env: {HOME: %q}
    cache:
      key: deps-${hash:lock.txt}-${os}
      restore_keys: [deps-]
      paths: [vendor, ~/.toolcache]
    commands:
      - cat vendor/lib.txt 2>/dev/null || echo no vendor yet
      - cat ~/.toolcache/tool.txt 2>/dev/null || echo no tool cache yet
      - mkdir -p vendor ~/.toolcache && ln -sf lib.txt vendor/link
      - test -f vendor/lib.txt || echo built-by-$WEFT_RUN_ID > vendor/lib.txt
      - test -f ~/.toolcache/tool.txt || echo tool-of-$WEFT_RUN_ID > ~/.toolcache/tool.txt
`, lock, home)
}

// A stage's cache carries its paths, in the workspace and in its home,
// from one run to the next: a miss and a save, then an exact hit, then,
// with a new lock file, a hit through the restore key of the newest
// entry, saved under the new key.
func TestTheCacheCarriesAStagesPathsToTheNextRun(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{})
	home := t.TempDir()
	// The key as documented: deps-, the SHA-256 of the SHA-256 of the
	// one file matched, -, GOOS.
	key := func(lock string) string {
		file := sha256.Sum256([]byte(lock + "\n"))
		all := sha256.Sum256(file[:])
		return "deps-" + hex.EncodeToString(all[:]) + "-" + runtime.GOOS
	}
	v1, v2 := key("v1"), key("v2")
	if !strings.HasSuffix(v1, "-"+runtime.GOOS) || v1 == v2 {
		t.Fatalf("keys %s and %s: want distinct keys ending in -%s", v1, v2, runtime.GOOS)
	}

	first, up := s.Run(t, cachePipeline("v1", home))
	mustSucceed(t, first, up)
	lines := stageLines(up)["deps"]
	if !hasLine(lines, "cache miss: no entry for key "+v1) || !hasLine(lines, "no vendor yet") {
		t.Fatalf("first run: want a miss, got %q", lines)
	}
	if !hasLine(lines, "cache saved key "+v1, "2 files") {
		t.Fatalf("first run: want key %s saved with 2 files, got %q", v1, lines)
	}
	// The home directory is emptied: what the next run finds there came
	// from the cache.
	if err := os.RemoveAll(filepath.Join(home, ".toolcache")); err != nil {
		t.Fatal(err)
	}

	second, up := s.Run(t, cachePipeline("v1", home))
	mustSucceed(t, second, up)
	lines = stageLines(up)["deps"]
	if !hasLine(lines, "cache hit: restored key "+v1, "run "+first.ID) {
		t.Fatalf("second run: want an exact hit on %s saved by %s, got %q", v1, first.ID, lines)
	}
	for _, want := range []string{"built-by-" + first.ID, "tool-of-" + first.ID, "was restored; not saved again"} {
		if !hasLine(lines, want) {
			t.Errorf("second run: no line %q in %q", want, lines)
		}
	}

	third, up := s.Run(t, cachePipeline("v2", home))
	mustSucceed(t, third, up)
	lines = stageLines(up)["deps"]
	if !hasLine(lines, "cache partial hit: no entry for key "+v2, "restored "+v1) || !hasLine(lines, "built-by-"+first.ID) {
		t.Fatalf("third run: want the v1 entry through the restore key, got %q", lines)
	}
	if !hasLine(lines, "cache saved key "+v2) {
		t.Fatalf("third run: want key %s saved, got %q", v2, lines)
	}

	c, err := objectstore.OpenCache(context.Background(), s.Bus.JS, objectstore.CacheLimits{})
	if err != nil {
		t.Fatal(err)
	}
	entries, err := c.List(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 2 || entries[0].Key != v1 || entries[1].Key != v2 || entries[0].Run != first.ID || entries[1].Run != third.ID {
		t.Fatalf("cache entries %+v, want %s by %s and %s by %s", entries, v1, first.ID, v2, third.ID)
	}
}

// Two runs that miss one key at once and both save it leave one entry,
// intact: the other run is told the key exists.
func TestConcurrentSaversOfOneCacheKeyLeaveOneEntry(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Slots: 2})
	gate := filepath.Join(t.TempDir(), "gate")
	text := fmt.Sprintf(`name: racers
stages:
  - key: install
    cache: {key: npm-1, paths: [node_modules]}
    commands:
      - mkdir -p node_modules && head -c 200000 /dev/urandom > node_modules/blob && echo $WEFT_RUN_ID > node_modules/owner
      - echo waiting at the gate
      - while [ ! -e %s ]; do sleep 0.05; done
`, gate)
	ids := []string{s.Submit(t, text), s.Submit(t, text)}
	// Both missed and are about to save when both reach the gate.
	runs, lines := s.FollowGated(t, ids, func(l string) bool { return l == "waiting at the gate" }, gate)
	saved := 0
	for i := range 2 {
		if runs[i] == nil || runs[i].State != wire.RunSucceeded {
			t.Fatalf("run %s: %+v, lines %q", ids[i], runs[i], lines[i])
		}
		if !hasLine(lines[i], "cache miss: no entry for key npm-1") {
			t.Fatalf("run %s did not miss: %q", ids[i], lines[i])
		}
		switch {
		case hasLine(lines[i], "cache saved key npm-1"):
			saved++
		case !hasLine(lines[i], "cache key npm-1 exists", "not saved"):
			t.Errorf("run %s neither saved nor was told the key exists: %q", ids[i], lines[i])
		}
	}
	if saved != 1 {
		t.Fatalf("%d runs saved key npm-1, want 1", saved)
	}
	c, err := objectstore.OpenCache(context.Background(), s.Bus.JS, objectstore.CacheLimits{})
	if err != nil {
		t.Fatal(err)
	}
	e, exact, err := c.Find(context.Background(), "", "npm-1", nil)
	if err != nil || e == nil || !exact {
		t.Fatalf("Find npm-1 = %+v, %v", e, err)
	}
	rd, err := c.Open(context.Background(), e)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	if n, err := io.Copy(io.Discard, rd); err != nil || n != e.Size {
		t.Fatalf("the entry reads %d of %d bytes: %v", n, e.Size, err)
	}
}
