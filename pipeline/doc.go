// Package pipeline parses and validates weft pipeline files and answers the
// pure scheduling questions about them: which stages are ready to run and
// which can never run, given the stages that have finished.
//
// It owns the user-facing file format (see "The pipeline file" in
// DESIGN.md) and its validation errors. It is a leaf: it imports only
// gopkg.in/yaml.v3 and github.com/weft-ci/weft/subjects, and must not import
// NATS, containerd, HTTP or any other weft package.
//
// Validation walks the yaml.Node tree rather than decoding into structs, so
// that every problem carries a file, line, column and field path, and Parse
// reports all problems at once, sorted by position. Every problem matches
// ErrInvalid, which commands map to exit code 2.
//
// Decisions taken where the design was silent:
//
//   - Scalars must have the expected YAML type: commands: 5 or name: 2024-01-01
//     are errors (quote them). The exception is env values, where numbers and
//     booleans are kept as their literal text (GOMAXPROCS: 4 is "4").
//   - Explicit nulls (a key with no value) are type errors everywhere, also
//     for optional fields and env values; write "" for an empty env value.
//   - commands and depends_on accept a single string as a one-element list.
//     stages, artifacts and retry.exit_status must be sequences.
//   - Stage keys are 1-63 characters of [a-z0-9_-] so that they fit in one
//     subject token; pipeline names are 1-128 characters of [A-Za-z0-9_.-]
//     starting with a letter or digit.
//   - Environment variable names match [A-Za-z_][A-Za-z0-9_]*; names
//     starting with WEFT_ (case-sensitive) are reserved for the variables
//     weft sets itself.
//   - memory is an integer number of bytes, or a string with a binary (Ki,
//     Mi, Gi, Ti) or decimal (K, M, G, T) suffix. cpus is a positive finite
//     number and may be fractional.
//   - timeout is a Go duration string ("10m", "1h30m") and must be positive;
//     a bare number is an error because its unit would be a guess.
//   - artifacts are relative glob patterns in path.Match syntax; absolute
//     paths and ".." elements are refused so that a stage cannot upload or
//     restore outside its work directory.
//   - A stage listing the same dependency twice is an error, as is a stage
//     depending on itself. A cycle is reported once, at the depends_on entry
//     that closes it, with the path starting at that stage.
//   - Unknown keys get a "did you mean" hint when a known key is within edit
//     distance 2; the same holds for unknown stages in depends_on.
//   - Anchors and aliases are resolved; errors inside an aliased value point
//     at the anchored original. Merge keys (<<) are refused. A document whose
//     alias expansion exceeds a million nodes is refused, so that a hostile
//     file cannot make the dispatcher walk an exponential tree.
//   - Limits (limits.go), each reported with the size found and the
//     limit: the file (MaxFileSize, at the file), the stage count
//     (MaxStages) and the expanded size, JSON with aliases expanded
//     (MaxSize), at the stages key; the commands (MaxCommandsSize) and the
//     environment with the pipeline's merged in (MaxEnvSize) of each
//     stage, at the stage. A file whose YAML values alone pass 32 MiB once
//     aliases are expanded is refused without being encoded. None of them
//     depends on the run's documents, which do not grow with the
//     pipeline (see package runstore).
//   - Only the first YAML document is read; a further non-empty document is
//     an error rather than being silently ignored.
package pipeline
