package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weft-ci/weft/test/busybox"
	"github.com/weft-ci/weft/wire"
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

func TestImageImport(t *testing.T) {
	t.Parallel()
	Containerd(t)
	dir := t.TempDir()
	archive := filepath.Join(dir, "busybox.tar")
	f, err := os.Create(archive)
	if err != nil {
		t.Fatal(err)
	}
	if err := busybox.Write(f, "/bin/busybox"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	garbage := filepath.Join(dir, "garbage.tar")
	if err := os.WriteFile(garbage, []byte("not an archive"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout string
		stderr string
	}{
		{"an OCI archive", []string{"image", "import", "--containerd-address", ContainerdAddress(), archive}, 0, busybox.Ref + "\n", ""},
		{"not an archive", []string{"image", "import", "--containerd-address", ContainerdAddress(), garbage}, 2, "", "garbage.tar"},
		{"no such file", []string{"image", "import", filepath.Join(dir, "nope.tar")}, 2, "", "nope.tar"},
		{"no containerd", []string{"image", "import", "--containerd-address", filepath.Join(dir, "no.sock"), archive}, 3, "", "containerd unavailable"},
	}
	for _, tt := range tests {
		res := RunWeft(t, weftBin, dir, nil, tt.args...)
		if res.Code != tt.code || res.Stdout != tt.stdout || !strings.Contains(res.Stderr, tt.stderr) {
			t.Errorf("%s: weft %q = exit %d, stdout %q, stderr %q; want %d, %q, %q", tt.name, tt.args, res.Code, res.Stdout, res.Stderr, tt.code, tt.stdout, tt.stderr)
		}
	}
}

func TestRunWithoutContainerd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := filepath.Join(dir, "mixed.yml")
	if err := os.WriteFile(file, []byte(`name: mixed
stages:
  - key: host
    commands: [echo on the host]
  - key: boxed
    image: docker.io/library/golang:1.23
    commands: [go version]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	noSock := filepath.Join(dir, "no.sock")
	// auto: host stages run, image stages fail with a message naming the image.
	res := RunWeft(t, weftBin, dir, nil, "run", "--json", "--containerd-address", noSock, file)
	if res.Code != 1 {
		t.Fatalf("weft run (auto, no containerd) exited %d, want 1: %s", res.Code, res.Stderr)
	}
	r := finalRun(t, decodeEvents(t, res.Stdout))
	host, boxed := r.Stage("host"), r.Stage("boxed")
	if host.State != wire.StageSucceeded || boxed.State != wire.StageFailed || boxed.Category != wire.CategoryInfra ||
		!strings.Contains(boxed.Message, "docker.io/library/golang:1.23") || !strings.Contains(boxed.Message, "containerd") {
		t.Errorf("host = %s; boxed = %s %q %q; want host succeeded, boxed failed infra naming the image and containerd", host.State, boxed.State, boxed.Category, boxed.Message)
	}
	// containerd required: infrastructure error.
	res = RunWeft(t, weftBin, dir, nil, "run", "--executor", "containerd", "--containerd-address", noSock, file)
	if res.Code != 3 || !strings.Contains(res.Stderr, "containerd unavailable") {
		t.Errorf("weft run --executor containerd without containerd = exit %d, stderr %q; want 3 naming containerd", res.Code, res.Stderr)
	}
}
