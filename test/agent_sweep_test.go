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
	// mkWorkspace makes a lane of a pipeline held by run (none when run
	// is ""), taken by its stage s, with a file in it.
	mkWorkspace := func(pipeline, run string) string {
		p := filepath.Join(dir, "_", pipeline, "0")
		if err := os.MkdirAll(filepath.Join(p, "sub"), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "sub", "file"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if run != "" {
			if err := os.WriteFile(p+".run", []byte(run+" s"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	// Workspaces whose run-finished notice the agent missed (it was made
	// again after the notice), of a run whose stage has no document, of a live
	// run, one no marker names, and what a removal cut short left.
	keep := []string{mkWorkspace("live", live), mkWorkspace("unmarked", ""), filepath.Join(dir, "not-a-run")}
	if err := os.MkdirAll(keep[2], 0o750); err != nil {
		t.Fatal(err)
	}
	// Made aside and moved in whole: the sweep may run in between.
	trash, staged := filepath.Join(dir, ".removing-"+ulidString()), t.TempDir()
	if err := os.MkdirAll(filepath.Join(staged, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(staged, trash); err != nil {
		t.Fatal(err)
	}
	gone := []string{mkWorkspace("ended", ended.ID), mkWorkspace("unknown", ulidString()), trash}
	if !Eventually(10*time.Second, func() bool { return !exists(gone[0]) && !exists(gone[1]) && !exists(gone[2]) }) {
		t.Fatalf("the sweep left %v", gone)
	}
	for _, p := range gone[:2] {
		if exists(p + ".run") {
			t.Errorf("the sweep left the marker %s.run", p)
		}
	}
	// Every sweep looks at every entry: once one that started after this
	// point removed another unknown run's workspace, it saw the others.
	later := mkWorkspace("later", ulidString())
	if !Eventually(10*time.Second, func() bool { return !exists(later) }) {
		t.Fatalf("the sweep left %s", later)
	}
	for _, p := range keep {
		if !exists(p) {
			t.Errorf("the sweep removed %s", p)
		}
	}
}
