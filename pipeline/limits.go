package pipeline

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
)

// MaxSize bounds the expanded size of a pipeline: the length of its JSON
// encoding (the form run documents and jobs embed, with every YAML alias
// expanded) plus StageStateSize bytes for each stage. Parse refuses a
// pipeline over it, so weft validate, weft run, weft trigger and the
// dispatcher apply the same limit.
//
// It is half of the 1 MiB NATS message (subjects.MaxPayload): a run
// document holds the pipeline and one stage state per stage, and the other
// half is room for what grows as the run goes (failure messages, longer
// agent ids). A stage's job carries one stage and the environment, both
// part of the expanded pipeline, so a job always fits too.
const MaxSize = 512 << 10

// StageStateSize is the room counted in MaxSize for the state a run
// document keeps of each stage (wire.StageRun). A finished stage with its
// four timestamps, agent id, job and log sequences measures about 350
// bytes.
const StageStateSize = 384

// maxMeasured bounds the YAML values (scalars, aliases expanded) of a file
// whose expanded size is measured by encoding it; a file holding more is
// over MaxSize without being encoded, so that a few aliases of a long
// string cannot make Parse build gigabytes.
const maxMeasured = 64 * MaxSize

// expandedSize returns the expanded size of pl (see MaxSize), or false
// when pl cannot be encoded (a value that failed validation).
func expandedSize(pl *Pipeline) (int, bool) {
	data, err := json.Marshal(pl)
	if err != nil {
		return 0, false
	}
	return len(data) + len(pl.Stages)*StageStateSize, true
}

// formatSize renders a byte count in KiB or MiB with one decimal, rounded
// up, so that a size over a limit never reads as the limit.
func formatSize(n int) string {
	var unit string
	var div float64
	switch {
	case n >= 1<<20:
		unit, div = "MiB", 1<<20
	case n >= 1<<10:
		unit, div = "KiB", 1<<10
	default:
		return strconv.Itoa(n) + " bytes"
	}
	s := strconv.FormatFloat(math.Ceil(float64(n)/div*10)/10, 'f', 1, 64)
	return strings.TrimSuffix(s, ".0") + " " + unit
}
