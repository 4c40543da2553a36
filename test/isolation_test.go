package test

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/internal/busybox"
	"github.com/weft-ci/weft/wire"
)

// A host stage gets the job's variables and the allowed ones of the
// agent's environment, never the agent's credentials or server URL nor
// anything else it was started with.
func TestAHostStageGetsACleanEnvironment(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	startWeft(t, nil, "dispatcher", "--server", f.url)
	f.agentEnv(t, "agent-env", []string{
		"WEFT_SERVER=" + f.url, "WEFT_TOKEN=s3cr3t",
		"DEPLOY_TOKEN=hunter2", "CORP_MIRROR=https://mirror.example", "CORP_CA=/etc/ca.pem",
	}, "--env-allow", "CORP_*")
	r, updates := f.s.Run(t, "name: env\nenv: {MINE: from-the-pipeline}\nstages:\n  - key: s\n    commands: [env]\n")
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s", r.State)
	}
	env := stageLines(updates)["s"]
	names := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		names[k] = v
	}
	for _, k := range []string{"WEFT_SERVER", "WEFT_TOKEN", "DEPLOY_TOKEN"} {
		if v, ok := names[k]; ok {
			t.Errorf("the stage has %s=%s from the agent's environment", k, v)
		}
	}
	for k, want := range map[string]string{"CORP_MIRROR": "https://mirror.example", "CORP_CA": "/etc/ca.pem", "MINE": "from-the-pipeline", "WEFT_RUN_ID": r.ID, "WEFT_STAGE": "s"} {
		if names[k] != want {
			t.Errorf("the stage has %s=%q, want %q", k, names[k], want)
		}
	}
	if names["PATH"] == "" || names["HOME"] == "" {
		t.Errorf("the stage lacks PATH or HOME: %s", strings.Join(env, " "))
	}

	for _, bad := range []string{"WEFT_*", "WEFT_CREDS", "W*", "A=B", "*"} {
		res := RunWeft(t, weftBin, t.TempDir(), nil, "agent", "--join", f.url, "--env-allow", bad)
		if res.Code != 2 || !strings.Contains(res.Stderr, "env allow") {
			t.Errorf("--env-allow %s: exit %d, stderr %q; want 2 naming it", bad, res.Code, res.Stderr)
		}
	}
}

// probeScript prints "open T" or "closed T" for each "HOST PORT" target,
// trying a TCP connection with busybox's nc (on the host and in the test
// image alike).
func probeScript(targets ...string) []string {
	var cmds []string
	for _, tg := range targets {
		cmds = append(cmds, fmt.Sprintf(`if busybox nc -w 3 %s </dev/null >/dev/null 2>&1; then echo "open %s"; else echo "closed %s"; fi`, tg, tg, tg))
	}
	return cmds
}

// On an agent that isolates stages (weft agent's default), neither a host
// stage nor a container stage can open the NATS port, on loopback or on
// another of the machine's addresses, while both reach the outside; a
// stage that asks for network: host shares the agent's network.
func TestNoStageReachesTheNATSPortByDefault(t *testing.T) {
	t.Parallel()
	Containerd(t)
	out := startOutside(t)
	f := startAuthFleet(t, "--listen", "0.0.0.0:0")
	_, port, err := net.SplitHostPort(strings.TrimPrefix(f.url, "nats://"))
	if err != nil {
		t.Fatal(err)
	}
	startWeft(t, nil, "dispatcher", "--server", f.url, "--creds", f.mint(t, "dispatcher"))
	agent := startWeft(t, nil, "agent", "--join", f.url, "--creds", f.mint(t, "agent", "--queue", "default"),
		"--containerd-address", ContainerdAddress(), "--slots", "3")
	agent.waitLine(t, &agent.stderr, 30*time.Second, "agent joined", func(l string) bool { return strings.Contains(l, "joined ") })

	loop, host, far := "127.0.0.1 "+port, out.HostAddr+" "+port, fmt.Sprintf("%s %d", out.FarAddr, out.Port())
	probe := probeScript(loop, host, far)
	quoted := func(cmds []string) string {
		var b strings.Builder
		for _, c := range cmds {
			fmt.Fprintf(&b, "      - %q\n", c)
		}
		return b.String()
	}
	pipeline := "name: reach\nstages:\n" +
		"  - key: host-stage\n    commands:\n" + quoted(probe) +
		"  - key: container-stage\n    image: " + busybox.Ref + "\n    commands:\n" + quoted(probe) +
		"  - key: host-network\n    network: host\n    commands:\n" + quoted(probeScript(loop))
	r, updates := f.s.Run(t, pipeline)
	if r.State != wire.RunSucceeded {
		t.Fatalf("run %s: %v", r.State, stageLines(updates))
	}
	lines := stageLines(updates)
	want := map[string][]string{
		"host-stage":      {"closed " + loop, "closed " + host, "open " + far},
		"container-stage": {"closed " + loop, "closed " + host, "open " + far},
		"host-network":    {"open " + loop},
	}
	for stage, w := range want {
		if !slices.Equal(lines[stage], w) {
			t.Errorf("stage %s printed %q, want %q", stage, lines[stage], w)
		}
	}
}
