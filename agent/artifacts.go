package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/bmatcuk/doublestar/v4"

	"github.com/weft-ci/weft/internal/bytesize"
	"github.com/weft-ci/weft/objectstore"
	"github.com/weft-ci/weft/wire"
)

// This file holds a stage's artifacts: restored into its workspace from
// the stages it depends on before its first command, and stored from it
// after its commands succeed (package objectstore).

// MaxArtifactsPerStage bounds the files one stage stores.
const MaxArtifactsPerStage = 500

// progressEvery is the least size of a file whose upload or restore is
// noted in the stage's log, with its rate; progressInterval how often a
// transfer in progress is.
const (
	progressEvery    = 4 << 20
	progressInterval = 2 * time.Second
)

// progressReader notes how far a transfer of total bytes got, at most
// every interval.
type progressReader struct {
	r        io.Reader
	what     string // "storing bin/app"
	total    int64
	interval time.Duration
	note     func(string)
	start    time.Time
	last     time.Time
	n        int64
}

func newProgressReader(r io.Reader, what string, total int64, note func(string)) io.Reader {
	if total < progressEvery {
		return r
	}
	now := time.Now()
	return &progressReader{r: r, what: what, total: total, interval: progressInterval, note: note, start: now, last: now}
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.n += int64(n)
	if now := time.Now(); now.Sub(p.last) >= p.interval && p.n < p.total {
		p.last = now
		p.note(fmt.Sprintf("weft: %s: %s of %s, %s/s", p.what, bytesize.Format(p.n), bytesize.Format(p.total),
			bytesize.Format(int64(float64(p.n)/max(now.Sub(p.start).Seconds(), 1e-3)))))
	}
	return n, err
}

// errArtifact marks an artifact refusal the pipeline is to blame for (a
// path, a size): the stage fails, and retrying would refuse again.
var errArtifact = errors.New("artifact refused")

// artifacts returns the agent's artifact store, opened at first use.
func (a *Agent) artifacts(ctx context.Context) (*objectstore.Store, error) {
	a.storeMu.Lock()
	defer a.storeMu.Unlock()
	if a.store != nil {
		return a.store, nil
	}
	s, err := objectstore.Open(ctx, a.js, a.cfg.ArtifactLimits)
	if err != nil {
		return nil, err
	}
	a.store = s
	return s, nil
}

// restoreArtifacts writes the artifacts of the job's earlier stages into
// its workspace dir, each one's digest checked as it streams.
func (a *Agent) restoreArtifacts(ctx context.Context, j *job, dir string, note func(string)) error {
	if len(j.Restore) == 0 {
		return nil
	}
	store, err := a.artifacts(ctx)
	if err != nil {
		return err
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("workspace: %w", err)
	}
	defer root.Close()
	for _, src := range j.Restore {
		m, err := a.events.GetMsg(ctx, src.Seq)
		if err != nil {
			return fmt.Errorf("artifacts of stage %s: finished event %d: %w", src.Stage, src.Seq, err)
		}
		var ev wire.Event
		if err := json.Unmarshal(m.Data, &ev); err != nil {
			return fmt.Errorf("artifacts of stage %s: finished event %d: %w", src.Stage, src.Seq, err)
		}
		for _, art := range ev.Artifacts {
			if err := restoreOne(ctx, store, root, j.RunID, src.Stage, art, note); err != nil {
				return err
			}
		}
		note(fmt.Sprintf("weft: restored %d artifacts of stage %s", len(ev.Artifacts), src.Stage))
	}
	return nil
}

// restoreOne writes one artifact of stage into root. The workspace is
// opened as a root, so no path (or symlink in it) writes outside it.
func restoreOne(ctx context.Context, store *objectstore.Store, root *os.Root, runID, stage string, art wire.Artifact, note func(string)) error {
	p, err := objectstore.CleanPath(art.Path)
	if err != nil {
		return fmt.Errorf("%w: stage %s: %w", errArtifact, stage, err)
	}
	r, err := store.Get(ctx, runID, stage, p)
	if err != nil {
		return err
	}
	defer r.Close()
	if r.Artifact.SHA256 != art.SHA256 {
		return fmt.Errorf("artifact %s of stage %s: stored as %s, recorded as %s: %w", p, stage, r.Artifact.SHA256, art.SHA256, objectstore.ErrDigest)
	}
	if d := path.Dir(p); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("restore artifact %s of stage %s: %w", p, stage, err)
		}
	}
	f, err := root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("restore artifact %s of stage %s: %w", p, stage, err)
	}
	t0 := time.Now()
	_, err = io.Copy(f, newProgressReader(r, fmt.Sprintf("restoring %s of stage %s", p, stage), art.Size, note))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = root.Remove(p)
		return fmt.Errorf("restore artifact %s of stage %s: %w", p, stage, err)
	}
	if art.Size >= progressEvery {
		note(fmt.Sprintf("weft: restored %s of stage %s: %s", p, stage, rate(art.Size, time.Since(t0))))
	}
	return nil
}

// artifactFile is a workspace file a stage's patterns matched.
type artifactFile struct {
	path string
	size int64
}

// collectArtifacts returns the files of workspace dir (opened as root)
// that the patterns match, in path order, with their sizes. A match that
// leaves the workspace (through a symlink) is refused, naming it; so is a
// pattern that does.
func collectArtifacts(root *os.Root, dir string, patterns []string) ([]artifactFile, error) {
	var out []artifactFile
	for _, pat := range patterns {
		if _, err := objectstore.CleanPath(pat); err != nil {
			return nil, fmt.Errorf("%w: pattern %s: %w", errArtifact, pat, err)
		}
		// os.DirFS follows symlinks, so that a match through one is seen,
		// and refused below, rather than silently skipped.
		matches, err := doublestar.Glob(os.DirFS(dir), pat, doublestar.WithFilesOnly())
		if err != nil {
			return nil, fmt.Errorf("%w: pattern %s: %w", errArtifact, pat, err)
		}
		for _, m := range matches {
			info, err := root.Stat(m)
			if err != nil {
				return nil, fmt.Errorf("%w: %s (pattern %s) leaves the workspace: %w", errArtifact, m, pat, err)
			}
			if !info.Mode().IsRegular() {
				continue
			}
			out = append(out, artifactFile{path: m, size: info.Size()})
		}
	}
	slices.SortFunc(out, func(a, b artifactFile) int { return strings.Compare(a.path, b.path) })
	out = slices.CompactFunc(out, func(a, b artifactFile) bool { return a.path == b.path })
	if len(out) > MaxArtifactsPerStage {
		return nil, fmt.Errorf("%w: %d files match, over the limit of %d artifacts per stage", errArtifact, len(out), MaxArtifactsPerStage)
	}
	return out, nil
}

// storeArtifacts stores the stage's artifacts from its workspace dir and
// returns them. Sizes are checked against the limits before anything is
// stored; a refusal wraps errArtifact.
func (a *Agent) storeArtifacts(ctx context.Context, j *job, dir string, note func(string)) ([]wire.Artifact, error) {
	if len(j.Stage.Artifacts) == 0 {
		return nil, nil
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	defer root.Close()
	files, err := collectArtifacts(root, dir, j.Stage.Artifacts)
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		note(fmt.Sprintf("weft: no file matches the artifact patterns %v", j.Stage.Artifacts))
		return nil, nil
	}
	store, err := a.artifacts(ctx)
	if err != nil {
		return nil, err
	}
	used := j.ArtifactBytes
	for _, af := range files {
		if err := store.Limits().Check(af.path, af.size, used); err != nil {
			return nil, fmt.Errorf("%w: %w", errArtifact, err)
		}
		used += af.size
	}
	var out []wire.Artifact
	var total int64
	used = j.ArtifactBytes
	for _, af := range files {
		p := af.path
		f, err := root.Open(p)
		if err != nil {
			return nil, fmt.Errorf("artifact %s: %w", p, err)
		}
		t0 := time.Now()
		art, err := store.Put(ctx, j.RunID, j.Stage.Key, p, newProgressReader(f, "storing "+p, af.size, note), used)
		f.Close()
		var le *objectstore.LimitError
		if errors.As(err, &le) {
			return nil, fmt.Errorf("%w: %w", errArtifact, err) // it grew while stored
		}
		if err != nil {
			return nil, err
		}
		used += art.Size
		total += art.Size
		out = append(out, wire.Artifact{Path: art.Path, Size: art.Size, SHA256: art.SHA256})
		if af.size >= progressEvery {
			note(fmt.Sprintf("weft: stored %s: %s", p, rate(art.Size, time.Since(t0))))
		}
	}
	note(fmt.Sprintf("weft: stored %d artifacts, %s", len(out), bytesize.Format(total)))
	return out, nil
}

// rate says how many bytes moved in d, and how fast.
func rate(n int64, d time.Duration) string {
	per := float64(n) / max(d.Seconds(), 1e-3)
	return fmt.Sprintf("%s in %s (%s/s)", bytesize.Format(n), d.Round(time.Millisecond), bytesize.Format(int64(per)))
}

// artifactFailure is the result of a stage whose artifacts could not be
// restored or stored: the pipeline's fault (errArtifact) fails it, any
// other error is the infrastructure's and retries it.
func artifactFailure(what string, err error) result {
	if errors.Is(err, errArtifact) {
		return result{exitCode: -1, category: wire.CategoryArtifact, message: fmt.Sprintf("%s: %v", what, err)}
	}
	return result{exitCode: -1, category: wire.CategoryInfra, message: fmt.Sprintf("%s: %v", what, err)}
}
