package test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/wire"
)

func TestTheSweepRemovesTheWorkspacesOfEndedAndUnknownRuns(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{NoAgent: true})
	dir := t.TempDir()
	s.AddAgent(agent.Config{WorkDir: dir, SweepInterval: 100 * time.Millisecond})
	ended, _ := s.Run(t, "name: ended\nstages:\n  - key: s\n    commands: [true]\n")
	if ended.State != wire.RunSucceeded {
		t.Fatalf("run %s, want succeeded", ended.State)
	}
	// A run that is live but has no job on this agent: a queue no agent
	// serves.
	live := s.Submit(t, "name: live\nqueue: nobody\nstages:\n  - key: s\n    commands: [true]\n")
	waitFor(t, s, live, "queued", stageIs("s", wire.StageQueued))
	mkWorkspace := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Join(p, "sub"), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "sub", "file"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	// Workspaces whose run-finished notice the agent missed (it was made
	// again after the notice), of a run the bucket no longer has, of a live
	// run, and a directory that is no workspace.
	keep := []string{mkWorkspace(live), mkWorkspace("not-a-run")}
	gone := []string{mkWorkspace(ended.ID), mkWorkspace(ulidString())}
	if !Eventually(10*time.Second, func() bool { return !exists(gone[0]) && !exists(gone[1]) }) {
		t.Fatalf("the sweep left %v", gone)
	}
	// Every sweep looks at every entry: once one that started after this
	// point removed another unknown run's workspace, it saw the others.
	later := mkWorkspace(ulidString())
	if !Eventually(10*time.Second, func() bool { return !exists(later) }) {
		t.Fatalf("the sweep left %s", later)
	}
	for _, p := range keep {
		if !exists(p) {
			t.Errorf("the sweep removed %s", p)
		}
	}
}
