// Package objectstore keeps stage artifacts in the JetStream Object Store
// bucket weft_artifacts (subjects.ArtifactsBucket): streaming put and get,
// a SHA-256 digest computed while an artifact streams in and checked
// while it streams out, names by run, stage and path, and size limits;
// and stage caches (cache.go) in weft_cache, create-only per repository
// and key, indexed by weft_cache_index.
//
// Decisions taken where the design was silent:
//
//   - An artifact is named <run>/<stage>/<path>, path relative to the
//     stage's workspace, slash-separated and clean (CleanPath). A path
//     that is absolute, empty, or climbs out with ".." is refused with the
//     path named before anything is stored.
//   - A stage that runs again (a retry, a takeover) replaces its
//     artifacts: the run's record names those of the attempt that
//     succeeded.
//   - Limits: DefaultMaxFile per file and DefaultMaxRun per run (what
//     a stage stores with what it restored), both configurable (Limits). An artifact over a limit is refused naming
//     the file, its size and the limit; one whose size is not known in
//     advance is refused as soon as it streams past the limit, and what it
//     had stored is purged.
//   - Nothing is held whole in memory: objects move in the store's chunks
//     (128 KiB), whatever their size, and a read holds at most 4 MiB
//     ahead of its reader (read.go). A transfer has no time limit; a
//     read fails with ErrStalled when the server sends nothing for
//     StallTimeout.
//   - Retention is the bucket's MaxAge (bus.Provision, --retention);
//     nothing here expires objects.
package objectstore

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/internal/bytesize"
	"github.com/weft-ci/weft/subjects"
)

// Default limits.
const (
	// DefaultMaxFile bounds one artifact: 5 GiB.
	DefaultMaxFile int64 = 5 << 30
	// DefaultMaxRun bounds what a stage stores with the artifacts it
	// restored: 20 GiB.
	DefaultMaxRun int64 = 20 << 30
)

// Limits bound artifact sizes; a zero field is its default.
type Limits struct {
	// File bounds one artifact, in bytes (DefaultMaxFile).
	File int64
	// Run bounds, in bytes, what one stage stores together with the
	// artifacts it restored, those of the stages it depends on: what one
	// workspace gathers of a run (DefaultMaxRun).
	Run int64
}

func (l Limits) withDefaults() Limits {
	if l.File <= 0 {
		l.File = DefaultMaxFile
	}
	if l.Run <= 0 {
		l.Run = DefaultMaxRun
	}
	return l
}

// Check returns a *LimitError when an artifact at path of size bytes is
// over the file limit, or would take the run's artifacts, which take used
// bytes already, over the run limit.
func (l Limits) Check(path string, size, used int64) error {
	l = l.withDefaults()
	if size > l.File {
		return &LimitError{Path: path, Size: size, Limit: l.File, Scope: "per file"}
	}
	if used+size > l.Run {
		return &LimitError{Path: path, Size: size, Limit: l.Run, Scope: "per run", Used: used}
	}
	return nil
}

// LimitError is an artifact refused for its size.
type LimitError struct {
	// Path is the artifact's path in its stage's workspace.
	Path string
	// Size is its size, or, for one refused while it streamed, the bytes
	// read when it passed the limit (AtLeast is set).
	Size    int64
	AtLeast bool
	// Limit is the limit it passed, Scope which one ("per file", "per
	// run"); Used is what the run's artifacts took before it.
	Limit int64
	Scope string
	Used  int64
	// What names what was refused when it is not an artifact at Path.
	What string
}

func (e *LimitError) Error() string {
	size := bytesize.Format(e.Size)
	if e.AtLeast {
		size = "over " + size
	}
	what := e.What
	if what == "" {
		what = "artifact " + e.Path
	}
	if e.Scope == "per run" {
		return fmt.Sprintf("%s: %s, with the run's %s over the limit of %s per run", what, size, bytesize.Format(e.Used), bytesize.Format(e.Limit))
	}
	return fmt.Sprintf("%s: %s, over the limit of %s %s", what, size, bytesize.Format(e.Limit), e.Scope)
}

// ErrNotFound is returned for an artifact the store does not hold.
var ErrNotFound = errors.New("artifact not found")

// ErrDigest is returned by a read whose bytes do not match the digest
// recorded when the artifact was stored.
var ErrDigest = errors.New("artifact digest mismatch")

// Artifact describes a stored artifact.
type Artifact struct {
	Run   string `json:"run"`
	Stage string `json:"stage"`
	// Path is relative to the stage's workspace, slash-separated.
	Path string `json:"path"`
	Size int64  `json:"size"`
	// SHA256 is the hex SHA-256 digest of the content.
	SHA256 string    `json:"sha256"`
	Stored time.Time `json:"stored"`
}

// Store is the artifact store on one connection.
type Store struct {
	bucket
	limits Limits
}

// Open opens the artifact bucket, which bus.Provision creates.
func Open(ctx context.Context, js jetstream.JetStream, limits Limits) (*Store, error) {
	b, err := openBucket(ctx, js, subjects.ArtifactsBucket)
	if err != nil {
		return nil, err
	}
	return &Store{bucket: b, limits: limits.withDefaults()}, nil
}

// Limits returns the store's limits.
func (s *Store) Limits() Limits { return s.limits }

// CleanPath returns p as an artifact path: relative, slash-separated and
// clean. An empty or absolute path, or one that climbs out of its
// workspace, is an error naming it.
func CleanPath(p string) (string, error) {
	if p == "" {
		return "", errors.New("artifact path is empty")
	}
	if strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("artifact path %q holds a NUL byte", p)
	}
	if path.IsAbs(p) || strings.HasPrefix(p, `\`) {
		return "", fmt.Errorf("artifact path %s is absolute: paths are relative to the workspace", p)
	}
	c := path.Clean(strings.ReplaceAll(p, `\`, "/"))
	if c == "." {
		return "", fmt.Errorf("artifact path %s names the workspace itself", p)
	}
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("artifact path %s leaves the workspace", p)
	}
	return c, nil
}

// Name returns the object name of an artifact: <run>/<stage>/<path>.
func Name(run, stage, p string) (string, error) {
	if run == "" || stage == "" || strings.Contains(run, "/") || strings.Contains(stage, "/") {
		return "", fmt.Errorf("artifact of run %q stage %q: run and stage must be names", run, stage)
	}
	c, err := CleanPath(p)
	if err != nil {
		return "", err
	}
	return run + "/" + stage + "/" + c, nil
}

// Object metadata keys.
const (
	metaRun   = "weft-run"
	metaStage = "weft-stage"
	metaPath  = "weft-path"
)

// Put stores the artifact at path of a run's stage from r, streaming, and
// returns it as stored. used is what the run's artifacts take already,
// for the run limit. Over a limit it returns a *LimitError and stores
// nothing.
func (s *Store) Put(ctx context.Context, run, stage, p string, r io.Reader, used int64) (Artifact, error) {
	name, err := Name(run, stage, p)
	if err != nil {
		return Artifact{}, err
	}
	c := strings.TrimPrefix(name, run+"/"+stage+"/")
	limit, scope := s.limits.File, "per file"
	if left := s.limits.Run - used; left < limit {
		limit, scope = max(left, 0), "per run"
	}
	lr := &limitedReader{r: r, left: limit}
	info, err := s.obs.Put(ctx, jetstream.ObjectMeta{
		Name:     name,
		Metadata: map[string]string{metaRun: run, metaStage: stage, metaPath: c},
	}, lr)
	if lr.over {
		return Artifact{}, &LimitError{Path: c, Size: limit, AtLeast: true, Limit: limitOf(s.limits, scope), Scope: scope, Used: used}
	}
	if err != nil {
		return Artifact{}, fmt.Errorf("store artifact %s: %w", name, err)
	}
	return artifactOf(info)
}

func limitOf(l Limits, scope string) int64 {
	if scope == "per run" {
		return l.Run
	}
	return l.File
}

// limitedReader reads r until left bytes were read, then fails.
type limitedReader struct {
	r    io.Reader
	left int64
	over bool
}

var errOverLimit = errors.New("over the size limit")

func (l *limitedReader) Read(p []byte) (int, error) {
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.r.Read(p)
	if int64(n) > l.left {
		l.over = true
		return 0, errOverLimit
	}
	l.left -= int64(n)
	return n, err
}

// Stat returns the stored artifact at path of a run's stage; ErrNotFound
// when there is none.
func (s *Store) Stat(ctx context.Context, run, stage, p string) (Artifact, error) {
	name, err := Name(run, stage, p)
	if err != nil {
		return Artifact{}, err
	}
	info, err := s.obs.GetInfo(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return Artifact{}, fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	if err != nil {
		return Artifact{}, fmt.Errorf("artifact %s: %w", name, err)
	}
	return artifactOf(info)
}

// Reader streams an artifact's content; a Read at the end returns
// ErrDigest instead of io.EOF when the content does not match its digest.
type Reader struct {
	// Artifact is what is being read.
	Artifact Artifact
	*objectReader
}

// Get opens the artifact at path of a run's stage for reading; ErrNotFound
// when there is none. Close the reader.
func (s *Store) Get(ctx context.Context, run, stage, p string) (*Reader, error) {
	name, err := Name(run, stage, p)
	if err != nil {
		return nil, err
	}
	rd, err := s.open(ctx, name, "artifact "+name, StallTimeout)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("%s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("artifact %s: %w", name, err)
	}
	a, err := artifactOf(rd.info)
	if err != nil {
		rd.Close()
		return nil, err
	}
	return &Reader{Artifact: a, objectReader: rd}, nil
}

// Delete removes the artifact at path of a run's stage; one already gone
// is not an error.
func (s *Store) Delete(ctx context.Context, run, stage, p string) error {
	name, err := Name(run, stage, p)
	if err != nil {
		return err
	}
	if err := s.obs.Delete(ctx, name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("delete artifact %s: %w", name, err)
	}
	return nil
}

// artifactOf describes a stored object.
func artifactOf(info *jetstream.ObjectInfo) (Artifact, error) {
	sum, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil {
		return Artifact{}, fmt.Errorf("artifact %s: digest %q: %w", info.Name, info.Digest, err)
	}
	return Artifact{
		Run: info.Metadata[metaRun], Stage: info.Metadata[metaStage], Path: info.Metadata[metaPath],
		Size: int64(info.Size), SHA256: hex.EncodeToString(sum), Stored: info.ModTime,
	}, nil
}
