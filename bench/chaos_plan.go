package bench

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/weft-ci/weft/wire"
)

// runKind is what a chaos run is for; it fixes the run's pipeline and the
// outcome the checker expects.
type runKind string

// The kinds of chaos runs.
const (
	// kindPlain is a four-stage DAG with a container stage when
	// containerd is there; it must succeed.
	kindPlain runKind = "plain"
	// kindGroup runs in a queue-mode concurrency group (deploy-<branch>):
	// its runs go one at a time and must all succeed.
	kindGroup runKind = "group"
	// kindSuperseded runs in the repository's cancel_in_progress group
	// and blocks until a later run of the group supersedes it: it must
	// end cancelled.
	kindSuperseded runKind = "superseded"
	// kindLatest is the last run of a cancel_in_progress group: nothing
	// supersedes it and it must succeed.
	kindLatest runKind = "latest"
	// kindCancel blocks in its second stage until the client cancels it
	// while that stage runs: it must end cancelled.
	kindCancel runKind = "cancel"
	// kindCancelEarly is cancelled by the client right after it is
	// accepted, usually while it waits for admission: it must end
	// cancelled.
	kindCancelEarly runKind = "cancel_early"
)

// want is the outcome the checker expects of a kind.
func (k runKind) want() wire.RunState {
	switch k {
	case kindSuperseded, kindCancel, kindCancelEarly:
		return wire.RunCancelled
	}
	return wire.RunSucceeded
}

// chaosMix is the share of each kind in a chaos plan; what is left over
// is plain. The cancel_in_progress share is split into superseded runs
// and the last run of each repository's group.
var chaosMix = []struct {
	kind  runKind
	share float64
}{
	{kindGroup, 0.22},
	{kindSuperseded, 0.10},
	{kindCancel, 0.10},
	{kindCancelEarly, 0.05},
}

// chaosRun is one planned run of the chaos and what the client did to it.
// The driver fills ID and the times; the checker reads them.
type chaosRun struct {
	// Index is the run's place in trigger order.
	Index int
	// Kind fixes the pipeline and the expected outcome.
	Kind runKind
	// Repo and Branch are the trigger's.
	Repo, Branch string
	// Group is the run's concurrency group as the dispatcher expands it;
	// empty for none.
	Group string
	// HoldCancel makes the client hold a kindCancel run's cancel until
	// the server restart is over (at most holdCancelMax), so that the
	// cancel reaches agents that are still reconnecting. One run per
	// repository has it, the first kindCancel one, so held runs never
	// take more than one WIP slot of a repository.
	HoldCancel bool
	// ID is the run id, once a dispatcher accepted the trigger.
	ID string
	// Cancelled is when the client's cancel was published; zero if none.
	Cancelled time.Time
	// CancelledRunning says the run's blocking stage was running when
	// the client cancelled it.
	CancelledRunning bool
}

// groupKey names a concurrency group across repositories.
func (r *chaosRun) groupKey() string {
	if r.Group == "" {
		return ""
	}
	return r.Repo + " " + r.Group
}

// plan returns the chaos runs in trigger order: runs runs spread round
// robin over repos repositories, each repository's runs of the kinds of
// chaosMix in their shares, shuffled by rng. Each repository's runs start
// with a cancel_in_progress run and two runs of one queue-mode group, so
// that the first is admitted at once and superseded while it runs and
// the group's second run waits for the first. The last cancel_in_progress
// run of each repository is kindLatest, and its first kindCancel run
// holds its cancel for the server restart.
func plan(runs, repos int, rng *rand.Rand) []*chaosRun {
	perRepo := make([][]runKind, repos)
	for r := range perRepo {
		n := runs / repos
		if r < runs%repos {
			n++
		}
		var kinds []runKind
		for _, m := range chaosMix {
			for range int(float64(n)*m.share + 0.5) {
				kinds = append(kinds, m.kind)
			}
		}
		for len(kinds) < n {
			kinds = append(kinds, kindPlain)
		}
		kinds = kinds[:n]
		rng.Shuffle(len(kinds), func(i, j int) { kinds[i], kinds[j] = kinds[j], kinds[i] })
		head := 0
		for _, want := range []runKind{kindSuperseded, kindGroup, kindGroup} {
			if i := slices.Index(kinds[head:], want); i >= 0 {
				kinds[head], kinds[head+i] = kinds[head+i], kinds[head]
				head++
			}
		}
		perRepo[r] = kinds
	}
	out := make([]*chaosRun, runs)
	last := map[string]*chaosRun{} // the last cancel_in_progress run of each repository
	groups := map[string]int{}     // group runs so far of each repository
	held := map[string]bool{}      // repositories with a HoldCancel run
	for i := range out {
		k := perRepo[i%repos][i/repos]
		r := &chaosRun{Index: i, Kind: k, Repo: fmt.Sprintf("chaos/repo-%d", i%repos), Branch: fmt.Sprintf("feature-%d", i)}
		switch k {
		case kindGroup:
			r.Branch = "main"
			if groups[r.Repo] >= 2 && rng.IntN(2) == 0 {
				r.Branch = "release"
			}
			groups[r.Repo]++
			r.Group = "deploy-" + r.Branch
		case kindSuperseded:
			r.Branch = "pr"
			r.Group = "preview-pr"
			last[r.Repo] = r
		case kindCancel:
			r.HoldCancel = !held[r.Repo]
			held[r.Repo] = true
		}
		out[i] = r
	}
	for _, r := range last {
		r.Kind = kindLatest
	}
	return out
}

// stageEnv is what every chaos pipeline passes its stages: where the
// helper script is, where stage records go, and when a blocking stage
// gives up (in /proc/uptime seconds).
type stageEnv struct {
	lib, records string
	deadline     int64
}

// chaosLib is the shell the host stages source. It runs in the stage's
// own shell (no child process does the work), so it dies with the shell
// when the agent is killed. Each attempt appends to its own file
// <run>.<stage>.<attempt>.<agent>.<pid> in $CHAOS_RECORDS lines "start T",
// "tick T" (every 0.1 s while it works, 0.2 s while it blocks), "end T"
// and "expired T", T in /proc/uptime seconds, read with shell builtins.
const chaosLib = `# weft bench chaos: stage helpers, sourced by the stage's shell.
chaos_rec() {
	read chaos_t chaos_idle </proc/uptime
	echo "$1 $chaos_t" >>"$chaos_f"
}
chaos_begin() {
	chaos_f="$CHAOS_RECORDS/$WEFT_RUN_ID.$WEFT_STAGE.$WEFT_ATTEMPT.$CHAOS_AGENT.$$"
	chaos_rec start
}
chaos_work() {
	chaos_n=0
	while [ "$chaos_n" -lt "$1" ]; do
		sleep 0.1
		chaos_rec tick
		chaos_n=$((chaos_n + 1))
	done
	chaos_rec end
}
chaos_block() {
	while :; do
		sleep 0.2
		chaos_rec tick
		if [ "${chaos_t%.*}" -ge "$CHAOS_DEADLINE" ]; then
			chaos_rec expired
			exit 3
		fi
	done
}
`

// pipelineText returns the pipeline of a chaos run. image, when set, is
// the image of the plain pipeline's container stage.
func pipelineText(r *chaosRun, env stageEnv, image string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "name: chaos-%s\n", strings.ReplaceAll(string(r.Kind), "_", "-"))
	fmt.Fprintf(&b, "env: {CHAOS_LIB: %q, CHAOS_RECORDS: %q, CHAOS_DEADLINE: %q}\n", env.lib, env.records, fmt.Sprint(env.deadline))
	switch r.Kind {
	case kindGroup:
		b.WriteString("concurrency:\n  group: deploy-${WEFT_BRANCH}\n")
	case kindSuperseded, kindLatest:
		b.WriteString("concurrency:\n  group: preview-${WEFT_BRANCH}\n  cancel_in_progress: true\n")
	}
	b.WriteString("stages:\n")
	host := func(key, work string, deps ...string) {
		fmt.Fprintf(&b, "  - key: %s\n", key)
		if len(deps) > 0 {
			fmt.Fprintf(&b, "    depends_on: [%s]\n", strings.Join(deps, ", "))
		}
		fmt.Fprintf(&b, "    commands: ['. \"$CHAOS_LIB\"', chaos_begin, '%s']\n", work)
	}
	switch r.Kind {
	case kindPlain:
		host("build", "chaos_work 3")
		if image != "" {
			fmt.Fprintf(&b, "  - key: test\n    depends_on: [build]\n    image: %s\n    commands: [echo testing in a container, sleep 0.3]\n", image)
		} else {
			host("test", "chaos_work 3", "build")
		}
		host("lint", "chaos_work 2", "build")
		host("package", "chaos_work 2", "test", "lint")
	case kindGroup, kindLatest:
		host("build", "chaos_work 2")
		host("deploy", "chaos_work 3", "build")
	case kindSuperseded:
		host("preview", "chaos_block")
	case kindCancel, kindCancelEarly:
		host("build", "chaos_work 1")
		host("hang", "chaos_block", "build")
	}
	return b.String()
}
