package test

import (
	"strings"
	"testing"

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
