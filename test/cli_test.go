package test

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestExitCodes(t *testing.T) {
	t.Parallel()
	diamond := filepath.Join(Root(), "examples", "diamond.yml")
	tests := []struct {
		name string
		args []string
		code int
		err  string
	}{
		{"help", []string{"--help"}, 0, ""},
		{"run help", []string{"run", "--help"}, 0, ""},
		{"validate help", []string{"validate", "--help"}, 0, ""},
		{"version", []string{"version"}, 0, ""},
		{"unknown command", []string{"bogus"}, 2, "unknown command"},
		{"missing file argument", []string{"run"}, 2, "accepts 1 arg"},
		{"bad flag value", []string{"run", "--slots", "x", diamond}, 2, "--slots"},
		{"bad priority", []string{"run", "--priority", "urgent", diamond}, 2, "priority"},
		{"no such file", []string{"validate", "nope.yml"}, 2, "nope.yml"},
		{"unreachable server", []string{"run", "--server", "nats://127.0.0.1:1", diamond}, 3, "nats unavailable"},
		{"valid file", []string{"validate", diamond}, 0, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := RunWeft(t, weftBin, t.TempDir(), nil, tt.args...)
			if res.Code != tt.code || !strings.Contains(res.Stderr, tt.err) {
				t.Errorf("weft %q exited %d with stderr %q, want %d and %q", tt.args, res.Code, res.Stderr, tt.code, tt.err)
			}
		})
	}
}

func TestRunAgainstAFleet(t *testing.T) {
	t.Parallel()
	s := StartStack(t, StackConfig{Listen: true, Slots: 2})
	file := filepath.Join(Root(), "examples", "diamond.yml")
	res := RunWeft(t, weftBin, t.TempDir(), nil, "run", "--server", s.Bus.ClientURL(), file)
	if res.Code != 0 {
		t.Fatalf("weft run --server exited %d: %s\n%s", res.Code, res.Stdout, res.Stderr)
	}
	for _, want := range []string{"build   | hello from build of diamond", "package * succeeded", "SUCCEEDED"} {
		if !strings.Contains(res.Stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, res.Stdout)
		}
	}
}
