package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/wire"
)

// wsPipeline prints its workspace's path, says whether the last run left
// a file there, leaves one, and waits for gate when it is not "".
func wsPipeline(gate string) string {
	wait := "true"
	if gate != "" {
		wait = fmt.Sprintf("while [ ! -e %s ]; do sleep 0.05; done", gate)
	}
	return fmt.Sprintf(`name: stable
stages:
  - key: build
    commands:
      - echo "workspace $(pwd)"
      - test -e left-behind && echo "found $(cat left-behind)" || echo "clean"
      - echo $WEFT_RUN_ID > left-behind
      - %s
`, wait)
}

// wsOf returns the workspace a run's build stage printed and what it
// found there.
func wsOf(t *testing.T, lines []string) (dir, found string) {
	t.Helper()
	for _, l := range lines {
		if d, ok := strings.CutPrefix(l, "workspace "); ok {
			dir = d
		}
		if l == "clean" || strings.HasPrefix(l, "found ") {
			found = l
		}
	}
	if dir == "" || found == "" {
		t.Fatalf("no workspace lines in %q", lines)
	}
	return dir, found
}

// A pipeline's runs get one stable workspace path, clean each time, and
// removed when the run ends.
func TestARunsWorkspaceHasAStablePathPerPipeline(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{})
	first, up := s.Run(t, wsPipeline(""))
	mustSucceed(t, first, up)
	dir1, found1 := wsOf(t, stageLines(up)["build"])
	second, up := s.Run(t, wsPipeline(""))
	mustSucceed(t, second, up)
	dir2, found2 := wsOf(t, stageLines(up)["build"])
	if dir1 != dir2 {
		t.Errorf("two runs of one pipeline worked in %s and %s, want one path", dir1, dir2)
	}
	if want := filepath.Join(s.WorkDir, "_", "stable", "0"); dir1 != want {
		t.Errorf("workspace %s, want %s (<work dir>/<repo>/<pipeline>/<lane>)", dir1, want)
	}
	if found1 != "clean" || found2 != "clean" {
		t.Errorf("runs found %q and %q, want clean workspaces", found1, found2)
	}
	if !Eventually(10*time.Second, func() bool { _, err := os.Stat(filepath.Join(s.WorkDir, "_")); return os.IsNotExist(err) }) {
		t.Errorf("the workspaces of ended runs are still there")
	}
}

// With KeepWorkspaces the next run finds what the last one left.
func TestKeptWorkspacesCarryFilesToTheNextRun(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true})
	s.Agent = s.AddAgent(agent.Config{WorkDir: s.WorkDir, KeepWorkspaces: true})
	first, up := s.Run(t, wsPipeline(""))
	mustSucceed(t, first, up)
	dir1, _ := wsOf(t, stageLines(up)["build"])
	second, up := s.Run(t, wsPipeline(""))
	mustSucceed(t, second, up)
	dir2, found := wsOf(t, stageLines(up)["build"])
	if dir1 != dir2 || found != "found "+first.ID {
		t.Fatalf("second run in %s found %q, want %s with the first run's file (%s)", dir2, found, dir1, first.ID)
	}
}

// Two runs of one pipeline at once never share a workspace: each holds
// its own lane until it ends, and a later run takes the lowest free one.
func TestRunsAtOnceNeverShareAWorkspace(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Slots: 2})
	gate := filepath.Join(t.TempDir(), "gate")
	ids := []string{s.Submit(t, wsPipeline(gate)), s.Submit(t, wsPipeline(gate))}
	// Both hold their workspaces when both reach the gate.
	runs, lines := s.FollowGated(t, ids, func(l string) bool { return l == "clean" || strings.HasPrefix(l, "found ") }, gate)
	var dirs []string
	for i := range 2 {
		if runs[i] == nil || runs[i].State != wire.RunSucceeded {
			t.Fatalf("run %s: %+v, lines %q", ids[i], runs[i], lines[i])
		}
		dir, found := wsOf(t, lines[i])
		if found != "clean" {
			t.Errorf("run %s found %q, want a clean workspace", ids[i], found)
		}
		dirs = append(dirs, dir)
	}
	parent := filepath.Join(s.WorkDir, "_", "stable")
	if dirs[0] == dirs[1] || filepath.Dir(dirs[0]) != parent || filepath.Dir(dirs[1]) != parent {
		t.Fatalf("runs at once worked in %v, want two lanes of %s", dirs, parent)
	}
	third, up := s.Run(t, wsPipeline(""))
	mustSucceed(t, third, up)
	if dir, _ := wsOf(t, stageLines(up)["build"]); dir != filepath.Join(parent, "0") {
		t.Errorf("a later run worked in %s, want lane 0 again", dir)
	}
}
