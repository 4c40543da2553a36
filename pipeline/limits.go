package pipeline

import (
	"encoding/json"

	"github.com/weft-ci/weft/internal/bytesize"
)

// Limits of a pipeline. Parse refuses a pipeline over any of them, so weft
// validate, weft run, weft trigger and the dispatcher apply the same ones.
// None depends on the run's documents: a run stores its pipeline once (in
// the pipelines object store) and one small document per stage, so what a
// run writes as it goes does not grow with the pipeline.
const (
	// MaxFileSize bounds the pipeline file: a trigger carries it, and a
	// trigger is one NATS message (1 MiB, with room for JSON escaping).
	MaxFileSize = 512 << 10
	// MaxStages bounds the stages of one pipeline.
	MaxStages = 10_000
	// MaxCommandsSize bounds the commands of one stage, in bytes: they
	// travel in the stage's job message.
	MaxCommandsSize = 64 << 10
	// MaxEnvSize bounds the environment of one stage (the pipeline's env
	// with the stage's own over it), names and values, in bytes: it
	// travels in the stage's job message.
	MaxEnvSize = 64 << 10
	// MaxSize bounds the expanded size of a pipeline (the length of its
	// JSON encoding, every YAML alias expanded): the spec the dispatcher
	// stores and keeps in memory.
	MaxSize = 8 << 20
)

// maxMeasured bounds the YAML values (scalars, aliases expanded) of a file
// whose expanded size is measured by encoding it; a file holding more is
// over MaxSize without being encoded, so that a few aliases of a long
// string cannot make Parse build gigabytes.
const maxMeasured = 4 * MaxSize

// expandedSize returns the expanded size of pl (see MaxSize), or false
// when pl cannot be encoded (a value that failed validation).
func expandedSize(pl *Pipeline) (int, bool) {
	data, err := json.Marshal(pl)
	if err != nil {
		return 0, false
	}
	return len(data), true
}

// commandsSize is the size of a stage's commands.
func commandsSize(st *Stage) int {
	n := 0
	for _, c := range st.Commands {
		n += len(c)
	}
	return n
}

// envSize is the size of the environment a stage of pl runs with.
func envSize(pl *Pipeline, st *Stage) int {
	n := 0
	for k, v := range pl.Env {
		if _, over := st.Env[k]; !over {
			n += len(k) + len(v)
		}
	}
	for k, v := range st.Env {
		n += len(k) + len(v)
	}
	return n
}

// formatSize renders a byte count as the limits' errors state it.
func formatSize(n int) string { return bytesize.Format(int64(n)) }
