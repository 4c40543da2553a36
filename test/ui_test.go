package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// browser starts Debian's headless Chromium for a test and returns a
// chromedp context on it.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		missing(t, "no chromium (Debian package chromium)")
	}
	// Not t.TempDir: Chromium's children may still write in it for a
	// moment after the browser stopped.
	dir, err := os.MkdirTemp("", "weft-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for range 50 {
			if os.RemoveAll(dir) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(dir),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelCtx(); cancelAlloc() })
	// The first run starts the browser, for the life of ctx: it gets no
	// timeout of its own (step gives each later one a timeout).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// screenshot saves the page as name.png in dir and returns its path.
func screenshot(t *testing.T, ctx context.Context, dir, name string) string {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// step runs chromedp actions, failing the test with what was being done.
func step(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, actions...); err != nil {
		body, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
		t.Fatalf("%s: %v\npage:\n%s", what, err, body)
	}
}

// read runs one chromedp action and returns its value.
func read[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	v, err := chromedp.Run(sctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// Must-show 3 of issue 14: the UI in a real headless Chromium. Its pages
// render; a running stage turns green on the run page when it finishes,
// without a reload, while its coloured output streams in; cancel works
// from the button. Screenshots are saved in the test's temporary
// directory (and in WEFT_UI_SCREENSHOTS when set, which is how the
// README's was made).
func TestTheUIInChromium(t *testing.T) {
	t.Parallel()
	ctx := browser(t)
	shots := t.TempDir()
	gate := newGate(t)
	dir, _ := gitRepo(t, map[string]string{".weft.yml": fmt.Sprintf(`name: web
env: {GATE: %q}
stages:
  - key: build
    commands: ['printf "\033[32mcompiled ok\033[0m\n"']
  - key: wait
    depends_on: [build]
    commands: ['echo waiting for the gate', 'while [ ! -f "$GATE" ]; do sleep 0.05; done', 'echo through']
  - key: lint
    depends_on: [build]
    commands: ['echo lint clean']
  - key: deploy
    depends_on: [wait, lint]
    commands: ['echo deployed']
`, string(gate)), "slow.yml": "name: slow\nstages:\n  - key: forever\n    commands: ['sleep 600']\n"})
	u := startUp(t, "--agents", "1", "--slots", "3")
	for name, file := range map[string]string{"demo/web": ".weft.yml", "demo/slow": "slow.yml"} {
		if out := RunWeft(t, weftBin, dir, nil, "repo", "add", "--server", u.nats, "--clone-url", "file://"+dir, "--pipeline", file, name); out.Code != 0 {
			t.Fatalf("weft repo add %s: %d\n%s", name, out.Code, out.Stderr)
		}
	}
	trigger := func(name string) string {
		t.Helper()
		resp, data := u.do(t, "POST", "/api/pipelines/"+url.PathEscape(name)+"/runs", nil)
		var c struct {
			RunID string `json:"run_id"`
		}
		if err := json.Unmarshal(data, &c); err != nil || resp.StatusCode != 201 {
			t.Fatalf("trigger %s: %d %s", name, resp.StatusCode, data)
		}
		return c.RunID
	}
	web := trigger("demo/web")

	step(t, ctx, "log in",
		chromedp.Navigate(u.url+"/login"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
		chromedp.SendKeys(chromedp.CSS("#token"), u.token),
		chromedp.Click(chromedp.CSS(`form.login button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#runs tr[data-run="`+web+`"]`)),
	)
	who := read(t, ctx, "read who is logged in", chromedp.Text(chromedp.CSS("#who")))
	if !strings.Contains(who, "admin") {
		t.Errorf("header says %q, want the admin token's name", who)
	}
	screenshot(t, ctx, shots, "runs")

	// The run page, while the gated stage runs.
	step(t, ctx, "open the run page and see the stage running",
		chromedp.Click(chromedp.CSS(`#runs tr[data-run="`+web+`"] a`)),
		chromedp.WaitVisible(chromedp.CSS(`#dag g.stage[data-stage="wait"][data-state="running"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#dag g.stage[data-stage="lint"][data-state="succeeded"]`)),
	)
	// A mark on the window: a reload would lose it.
	read(t, ctx, "mark the window", chromedp.Evaluate[bool](`window.__notReloaded = true`))
	path := read(t, ctx, "read the path", chromedp.Evaluate[string](`location.pathname`))
	if path != "/runs/"+web {
		t.Errorf("the run page is at %q", path)
	}
	screenshot(t, ctx, shots, "run-running")
	gate.open(t)
	step(t, ctx, "see the stage turn green without a reload",
		chromedp.WaitVisible(chromedp.CSS(`#dag g.stage[data-stage="wait"][data-state="succeeded"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#run-state [data-state="succeeded"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#log[data-ended="true"]`)),
	)
	kept := read(t, ctx, "read the mark", chromedp.Evaluate[bool](`window.__notReloaded === true`))
	green := read(t, ctx, "read the stage's colour", chromedp.Evaluate[string](`getComputedStyle(document.querySelector('#dag g.stage[data-stage="wait"] rect')).fill`))
	if !kept {
		t.Error("the run page was reloaded")
	}
	if green != "rgb(31, 157, 85)" {
		t.Errorf("the finished stage is drawn %s, want green", green)
	}
	logText := read(t, ctx, "read the log", chromedp.Text(chromedp.CSS("#log")))
	coloured := read(t, ctx, "read the coloured line", chromedp.Text(chromedp.CSS("#log .ansi-32")))
	for _, want := range []string{"build | compiled ok", "wait | waiting for the gate", "wait | through", "deploy | deployed"} {
		if !strings.Contains(logText, want) {
			t.Errorf("the log lacks %q:\n%s", want, logText)
		}
	}
	if coloured != "compiled ok" || strings.Contains(logText, "[32m") {
		t.Errorf("ANSI colour not rendered: coloured span %q, log %q", coloured, logText)
	}
	saved := screenshot(t, ctx, shots, "run-succeeded")

	// Cancel from the button.
	slow := trigger("demo/slow")
	step(t, ctx, "cancel a running stage from the button",
		chromedp.Navigate(u.url+"/runs/"+slow),
		chromedp.WaitVisible(chromedp.CSS(`#dag g.stage[data-stage="forever"][data-state="running"]`)),
		chromedp.WaitEnabled(chromedp.CSS("#cancel")),
		chromedp.Click(chromedp.CSS("#cancel")),
		chromedp.WaitVisible(chromedp.CSS(`#run-state [data-state="cancelled"]`)),
	)
	resp, data := u.do(t, "GET", "/api/runs/"+slow, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(data), `"state": "cancelled"`) {
		t.Errorf("after the button, the API has the run %s", data)
	}
	// Retry it from its button: the stage runs again, live; cancel again.
	step(t, ctx, "retry the cancelled run from the button",
		chromedp.WaitEnabled(chromedp.CSS("#retry")),
		chromedp.Click(chromedp.CSS("#retry")),
		chromedp.WaitVisible(chromedp.CSS(`#dag g.stage[data-stage="forever"][data-state="running"]`)),
		chromedp.WaitEnabled(chromedp.CSS("#cancel")),
		chromedp.Click(chromedp.CSS("#cancel")),
		chromedp.WaitVisible(chromedp.CSS(`#run-state [data-state="cancelled"]`)),
	)
	resp, data = u.do(t, "GET", "/api/runs/"+slow, nil)
	if resp.StatusCode != 200 || !strings.Contains(string(data), `"replays": 1`) || !strings.Contains(string(data), `"attempt": 2`) {
		t.Errorf("after the retry button, the API has the run %s", data)
	}

	step(t, ctx, "the queues page renders",
		chromedp.Click(chromedp.CSS(`header a[data-nav="queues"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#queues tr[data-queue="main"]`)),
		chromedp.WaitVisible(chromedp.CSS("#intake")),
	)
	screenshot(t, ctx, shots, "queues")
	step(t, ctx, "the agents page renders",
		chromedp.Click(chromedp.CSS(`header a[data-nav="agents"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#agents tr[data-agent]`)),
	)
	screenshot(t, ctx, shots, "agents")
	t.Logf("screenshots in %s", shots)
	if dst := os.Getenv("WEFT_UI_SCREENSHOTS"); dst != "" {
		data, err := os.ReadFile(saved)
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, "ui-run.png"), data, 0o644)
		}
		if err != nil {
			t.Error(err)
		}
	}
}
