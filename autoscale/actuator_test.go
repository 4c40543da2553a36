package autoscale

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/test"
)

// readLines returns the lines of file; none when it does not exist.
func readLines(t *testing.T, file string) []string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func TestHooksRunWithTheQueueAndTheTarget(t *testing.T) {
	log := filepath.Join(t.TempDir(), "hooks.log")
	env := append(os.Environ(), "LOG="+log)
	h, err := NewHooks(HooksConfig{
		Up:     `echo "up $WEFT_QUEUE $WEFT_AGENTS $WEFT_TARGET $WEFT_SERVER" >> "$LOG"`,
		Down:   `echo "down $WEFT_QUEUE $WEFT_AGENTS $WEFT_TARGET" >> "$LOG"; exit 3`,
		Server: "nats://ci:4222", Env: env,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := h.Scale(ctx, Decision{Queue: "main", Action: Up, Agents: 1, Target: 2}); err != nil {
		t.Errorf("up hook: %v", err)
	}
	err = h.Scale(ctx, Decision{Queue: "main", Action: Down, Agents: 2, Target: 1})
	if want := "down hook of queue main (target 1): exit status 3"; err == nil || err.Error() != want {
		t.Errorf("a failing down hook: %v, want %s", err, want)
	}
	if got, want := readLines(t, log), []string{"up main 1 2 nats://ci:4222", "down main 2 1"}; !slices.Equal(got, want) {
		t.Errorf("hooks ran %q, want %q", got, want)
	}
	if n := h.Removable("main"); n != -1 {
		t.Errorf("Removable with a down hook = %d, want -1", n)
	}

	upOnly, err := NewHooks(HooksConfig{Up: `echo up >> "$LOG"`, Env: env})
	if err != nil {
		t.Fatal(err)
	}
	if n := upOnly.Removable("main"); n != 0 {
		t.Errorf("Removable without a down hook = %d, want 0", n)
	}
	if err := upOnly.Scale(ctx, Decision{Queue: "main", Action: Down, Agents: 2, Target: 1}); err != nil || len(readLines(t, log)) != 2 {
		t.Errorf("scaling down without a down hook: %v, ran %q; want nothing run", err, readLines(t, log))
	}

	slow, err := NewHooks(HooksConfig{Up: "sleep 10", Timeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	err = slow.Scale(ctx, Decision{Queue: "main", Action: Up, Agents: 0, Target: 1})
	if err == nil || !strings.Contains(err.Error(), "up hook of queue main (target 1): killed after 100ms") {
		t.Errorf("a hook over its timeout: %v, want killed after 100ms", err)
	}

	if _, err := NewHooks(HooksConfig{Down: "true"}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("NewHooks without an up hook = %v, want ErrInvalidConfig", err)
	}
}

// A fake weft binary: it writes its arguments to DIR/<its --id>.args,
// and on SIGTERM writes DIR/<id>.term and exits 0. The trap is set
// before the arguments appear, and they appear whole (renamed into
// place), so a test that has seen them may read them and signal it.
const fakeWeft = `#!/bin/sh
id=$(echo "$@" | sed 's/.*--id \([^ ]*\).*/\1/')
trap 'echo > "$DIR/$id.term"; exit 0' TERM
echo "$@" > "$DIR/$id.args.tmp" && mv "$DIR/$id.args.tmp" "$DIR/$id.args"
while :; do sleep 0.05; done
`

func TestLocalStartsAgentsAndDrainsTheNewest(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "weft")
	if err := os.WriteFile(exe, []byte(fakeWeft), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := NewLocal(LocalConfig{Executable: exe, Server: "nats://ci:4222", Creds: "/etc/agent.creds", Slots: 2, Executor: "process",
		Env: append(os.Environ(), "DIR="+dir)})
	if err != nil {
		t.Fatal(err)
	}
	exists := func(name string) bool { _, err := os.Stat(filepath.Join(dir, name)); return err == nil }
	ctx := context.Background()
	if err := l.Scale(ctx, Decision{Queue: "main", Action: Up, Agents: 1, Target: 3}); err != nil {
		t.Fatal(err)
	}
	ids := l.Running()["main"]
	if len(ids) != 2 || l.Removable("main") != 2 || l.Removable("pr") != 0 {
		t.Fatalf("after scaling up from 1 to 3: running %v, removable %d; want 2 agents of main", l.Running(), l.Removable("main"))
	}
	for _, id := range ids {
		if !test.Eventually(10*time.Second, func() bool { return exists(id + ".args") }) {
			t.Fatalf("agent %s never ran", id)
		}
		b, _ := os.ReadFile(filepath.Join(dir, id+".args"))
		if got, want := strings.TrimSpace(string(b)), "agent --join nats://ci:4222 --id "+id+" --queue main --creds /etc/agent.creds --slots 2 --executor process"; got != want {
			t.Errorf("agent ran with %q, want %q", got, want)
		}
	}
	if err := l.Scale(ctx, Decision{Queue: "main", Action: Down, Agents: 3, Target: 2}); err != nil {
		t.Fatal(err)
	}
	if n := l.Removable("main"); n != 1 {
		t.Errorf("Removable while the newest drains = %d, want 1", n)
	}
	if !test.Eventually(10*time.Second, func() bool { return exists(ids[1]+".term") && len(l.Running()["main"]) == 1 }) {
		t.Fatalf("the newest agent %s never got SIGTERM and exited; running %v", ids[1], l.Running())
	}
	if exists(ids[0] + ".term") {
		t.Errorf("the oldest agent %s got SIGTERM, want the newest only", ids[0])
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if !exists(ids[0]+".term") || len(l.Running()) != 0 {
		t.Errorf("after Close: %s drained %v, running %v; want it drained and none running", ids[0], exists(ids[0]+".term"), l.Running())
	}
	if err := l.Scale(ctx, Decision{Queue: "main", Action: Up, Agents: 0, Target: 1}); !errors.Is(err, ErrClosed) {
		t.Errorf("Scale after Close = %v, want ErrClosed", err)
	}
}
