package test

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/weft-ci/weft/container"
	"github.com/weft-ci/weft/internal/busybox"
)

// ContainerdAddress is the containerd socket tests use:
// $WEFT_CONTAINERD_ADDRESS or containerd's default.
func ContainerdAddress() string {
	if a := os.Getenv("WEFT_CONTAINERD_ADDRESS"); a != "" {
		return a
	}
	return "/run/containerd/containerd.sock"
}

// InCI reports whether the tests run under CI (CI=true), where a missing
// containerd or busybox is a failure, never a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// Containerd connects to containerd for a test, with the busybox test image
// (busybox.Ref) imported. Without containerd or a static busybox the test
// fails under CI=true and is skipped elsewhere.
func Containerd(t testing.TB) *container.Runtime {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rt, err := container.Connect(ctx, container.Config{Address: ContainerdAddress()})
	if err != nil {
		missing(t, "containerd is not reachable: "+err.Error())
	}
	t.Cleanup(func() { rt.Close() })
	if !busybox.Available("/bin/busybox") {
		missing(t, "no static busybox at /bin/busybox (Debian package busybox-static)")
	}
	var archive bytes.Buffer
	if err := busybox.Write(&archive, "/bin/busybox"); err != nil {
		t.Fatalf("build busybox image: %v", err)
	}
	if _, err := rt.Import(ctx, &archive, ""); err != nil {
		t.Fatalf("import busybox image: %v", err)
	}
	return rt
}

// missing fails the test under CI and skips it elsewhere.
func missing(t testing.TB, why string) {
	t.Helper()
	if InCI() {
		t.Fatalf("%s; CI=true requires it (the README's test command installs containerd, runc and busybox-static and starts containerd)", why)
	}
	t.Skipf("%s (set CI=true to make this a failure)", why)
}
