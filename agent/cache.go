package agent

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"github.com/klauspost/compress/zstd"
	"github.com/oklog/ulid/v2"

	"github.com/weft-ci/weft/internal/bytesize"
	"github.com/weft-ci/weft/objectstore"
	"github.com/weft-ci/weft/pipeline"
)

// This file holds a stage's cache (pipeline.Cache): restored before its
// first command, saved after its commands succeed (objectstore.Cache).
//
// An entry is a zstd-compressed tar of the stage's cache paths, those in
// the workspace under w/ and those in the home directory under h/. A
// restore downloads the archive to a file next to the workspaces first
// and extracts it only once its digest checked, so a damaged archive
// writes nothing; it extracts only what lies under the stage's own cache
// paths, through os.Root, so nothing lands outside the workspace or the
// home directory.
//
// A cache problem never fails a stage: it is noted in the stage's log and
// the stage goes on as after a miss.

// Archive prefixes of the two places cache paths live.
const (
	archiveWorkspace = "w"
	archiveHome      = "h"
)

// errSaveEnded stops a cache packer whose archive is no longer read.
var errSaveEnded = errors.New("cache save ended")

// stageCache is a stage's cache once its key is expanded.
type stageCache struct {
	spec        *pipeline.Cache
	key         string
	restoreKeys []string
	// exact: the key's own entry was restored, so there is nothing to save.
	exact bool
	dir   string // the workspace
	home  string // the stage's home directory; "" when it has none
}

// caches returns the agent's stage cache, opened at first use.
func (a *Agent) caches(ctx context.Context) (*objectstore.Cache, error) {
	a.storeMu.Lock()
	defer a.storeMu.Unlock()
	if a.cache != nil {
		return a.cache, nil
	}
	c, err := objectstore.OpenCache(ctx, a.js, a.cfg.CacheLimits)
	if err != nil {
		return nil, err
	}
	a.cache = c
	return c, nil
}

// restoreCache expands the job's cache key and restores the entry of the
// key, or else the newest of the first restore key that has one, into
// workspace dir. It returns the cache to save after the stage, nil when
// the stage has none or its key cannot be expanded.
func (a *Agent) restoreCache(ctx context.Context, j *job, dir string, note func(string)) *stageCache {
	spec := j.Stage.Cache
	if spec == nil {
		return nil
	}
	sc := &stageCache{spec: spec, dir: dir, home: a.stageHome(j)}
	var err error
	if sc.key, err = expandCacheKey(spec.Key, dir); err == nil {
		for _, rk := range spec.RestoreKeys {
			var k string
			if k, err = expandCacheKey(rk, dir); err != nil {
				break
			}
			sc.restoreKeys = append(sc.restoreKeys, k)
		}
	}
	if err != nil {
		note(fmt.Sprintf("weft: cache: %v; the cache is neither restored nor saved", err))
		return nil
	}
	c, err := a.caches(ctx)
	if err != nil {
		note(fmt.Sprintf("weft: cache miss: %v", err))
		return sc
	}
	e, exact, err := c.Find(ctx, j.Repo, sc.key, sc.restoreKeys)
	switch {
	case err != nil:
		note(fmt.Sprintf("weft: cache miss: key %s: %v", sc.key, err))
		return sc
	case e == nil && len(sc.restoreKeys) > 0:
		note(fmt.Sprintf("weft: cache miss: no entry for key %s or restore keys %s", sc.key, strings.Join(sc.restoreKeys, ", ")))
		return sc
	case e == nil:
		note(fmt.Sprintf("weft: cache miss: no entry for key %s", sc.key))
		return sc
	}
	t0 := time.Now()
	files, err := a.restoreEntry(ctx, c, e, sc, note)
	if err != nil {
		note(fmt.Sprintf("weft: cache miss: restoring %s: %v", e.Describe(), err))
		return sc
	}
	sc.exact = exact
	if exact {
		note(fmt.Sprintf("weft: cache hit: restored key %s, %s, %s", e.Describe(), filesCount(files), rate(e.Size, time.Since(t0))))
	} else {
		note(fmt.Sprintf("weft: cache partial hit: no entry for key %s; restored %s through a restore key, %s, %s", sc.key, e.Describe(), filesCount(files), rate(e.Size, time.Since(t0))))
	}
	return sc
}

// restoreEntry downloads an entry's archive beside the workspaces,
// digest checked, and extracts it.
func (a *Agent) restoreEntry(ctx context.Context, c *objectstore.Cache, e *objectstore.CacheEntry, sc *stageCache, note func(string)) (int, error) {
	r, err := c.Open(ctx, e)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	tmp, err := os.CreateTemp(a.cfg.WorkDir, ".cache-"+ulid.Make().String()+"-*")
	if err != nil {
		return 0, fmt.Errorf("download: %w", err)
	}
	defer func() {
		tmp.Close()
		os.Remove(tmp.Name())
	}()
	if _, err := io.Copy(tmp, newProgressReader(r, "restoring the cache of key "+e.Key, e.Size, note)); err != nil {
		return 0, fmt.Errorf("download: %w", err)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return 0, err
	}
	return extractCache(tmp, sc)
}

// saveCache saves the stage's cache paths as the entry of its key, unless
// the key's entry was restored or exists.
func (a *Agent) saveCache(ctx context.Context, j *job, sc *stageCache, note func(string)) {
	if sc == nil {
		return
	}
	if sc.exact {
		note(fmt.Sprintf("weft: cache key %s was restored; not saved again", sc.key))
		return
	}
	c, err := a.caches(ctx)
	if err != nil {
		note(fmt.Sprintf("weft: cache not saved: %v", err))
		return
	}
	// Save looks for the key's entry before it reads the archive: until
	// then the packer is blocked on the pipe, so a key that exists costs
	// no more than the archive's first compressed block.
	pr, pw := io.Pipe()
	type packed struct {
		files int
		err   error
	}
	done := make(chan packed, 1)
	go func() {
		n, err := writeCache(pw, sc)
		pw.CloseWithError(err)
		done <- packed{n, err}
	}()
	t0 := time.Now()
	res, err := c.Save(ctx, j.Repo, sc.key, j.RunID, j.Stage.Key, pr)
	pr.CloseWithError(errSaveEnded) // stops the packer when Save read nothing or gave up
	p := <-done
	switch {
	case err != nil && !res.Saved:
		if p.err != nil && !errors.Is(p.err, errSaveEnded) && !errors.Is(p.err, io.ErrClosedPipe) {
			err = fmt.Errorf("cache key %s: %w", sc.key, p.err) // the packer's failure is the cause
		}
		note(fmt.Sprintf("weft: cache not saved: %v", err))
	case !res.Saved:
		note(fmt.Sprintf("weft: cache key %s exists (%s); not saved", sc.key, res.Entry.Describe()))
	case p.files == 0:
		note(fmt.Sprintf("weft: cache saved key %s, empty: none of %s exists", sc.key, strings.Join(sc.spec.Paths, ", ")))
	default:
		note(fmt.Sprintf("weft: cache saved key %s: %s, %s", sc.key, filesCount(p.files), rate(res.Entry.Size, time.Since(t0))))
	}
	if len(res.Evicted) > 0 {
		var keys []string
		for _, e := range res.Evicted {
			keys = append(keys, e.Key)
		}
		note(fmt.Sprintf("weft: cache: evicted %d entries to keep the repository's cache within %s (least recently used first, or unused for %s): %s",
			len(res.Evicted), bytesize.Format(c.Limits().Quota), c.Limits().MaxUnused, strings.Join(keys, ", ")))
	}
	if err != nil && res.Saved {
		note(fmt.Sprintf("weft: cache: eviction: %v", err))
	}
}

// filesCount says how many files: "1 file", "3 files".
func filesCount(n int) string {
	if n == 1 {
		return "1 file"
	}
	return fmt.Sprintf("%d files", n)
}

// stageHome is the home directory of the job's host process: its HOME,
// else the agent's base environment's.
func (a *Agent) stageHome(j *job) string {
	if h, ok := j.Env["HOME"]; ok {
		return h
	}
	for _, kv := range slices.Backward(a.cfg.Env) {
		if h, ok := strings.CutPrefix(kv, "HOME="); ok {
			return h
		}
	}
	return ""
}

// expandCacheKey expands a key template against workspace dir.
func expandCacheKey(tpl, dir string) (string, error) {
	key, err := pipeline.ExpandKey(tpl, func(name, arg string) (string, error) {
		switch name {
		case "hash":
			return hashFiles(dir, arg)
		case "arch":
			return runtime.GOARCH, nil
		case "os":
			return runtime.GOOS, nil
		}
		return "", fmt.Errorf("unknown reference %s", name)
	})
	if err == nil && len(key) > pipeline.MaxCacheKeyBytes {
		err = fmt.Errorf("cache key %s: %d bytes expanded, over the limit of %d", tpl, len(key), pipeline.MaxCacheKeyBytes)
	}
	return key, err
}

// hashFiles returns the hex SHA-256 of the SHA-256 digests of the
// workspace files that the comma-separated globs match, in path order:
// the same files with the same content give the same hash. No match is
// the empty string, as GitHub's hashFiles gives. A match through a
// symlink that leaves the workspace is an error.
func hashFiles(dir, globs string) (string, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return "", fmt.Errorf("workspace: %w", err)
	}
	defer root.Close()
	var files []string
	for pat := range strings.SplitSeq(globs, ",") {
		pat = strings.TrimSpace(pat)
		if _, err := objectstore.CleanPath(pat); err != nil {
			return "", err
		}
		m, err := doublestar.Glob(os.DirFS(dir), pat, doublestar.WithFilesOnly())
		if err != nil {
			return "", fmt.Errorf("pattern %s: %w", pat, err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		return "", nil
	}
	slices.Sort(files)
	files = slices.Compact(files)
	all := sha256.New()
	for _, name := range files {
		f, err := root.Open(name)
		if err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("%s: %w", name, err)
		}
		all.Write(h.Sum(nil))
	}
	return hex.EncodeToString(all.Sum(nil)), nil
}

// cachePlace is where a cache path lives: its archive prefix, its root
// directory and its path under it.
type cachePlace struct {
	prefix, root, rel string
}

// places returns where the stage's cache paths live; those in the home
// directory are left out when the stage has none.
func (sc *stageCache) places() []cachePlace {
	var out []cachePlace
	for _, p := range sc.spec.Paths {
		rel, home := pipeline.CachePath(p)
		switch {
		case !home:
			out = append(out, cachePlace{archiveWorkspace, sc.dir, rel})
		case sc.home != "":
			out = append(out, cachePlace{archiveHome, sc.home, rel})
		}
	}
	return out
}

// writeCache writes the stage's cache paths to w as a zstd-compressed
// tar and returns how many files it holds. Paths that do not exist are
// left out; symlinks are kept as links.
func writeCache(w io.Writer, sc *stageCache) (int, error) {
	zw, err := zstd.NewWriter(w, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedFastest))
	if err != nil {
		return 0, err
	}
	tw := tar.NewWriter(zw)
	files := 0
	for _, pl := range sc.places() {
		n, err := archivePlace(tw, pl)
		files += n
		if err != nil {
			zw.Close()
			return files, err
		}
	}
	if err := tw.Close(); err != nil {
		zw.Close()
		return files, err
	}
	return files, zw.Close()
}

// archivePlace adds one cache path to tw.
func archivePlace(tw *tar.Writer, pl cachePlace) (int, error) {
	root, err := os.OpenRoot(pl.root)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer root.Close()
	if _, err := root.Lstat(pl.rel); errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	files := 0
	err = fs.WalkDir(root.FS(), pl.rel, func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := root.Lstat(name)
		if err != nil {
			return err
		}
		var link string
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			if link, err = root.Readlink(name); err != nil {
				return err
			}
		case !info.Mode().IsRegular() && !info.IsDir():
			return nil // sockets, devices, pipes: not cached
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = path.Join(pl.prefix, name)
		if info.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := root.Open(name)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.CopyN(tw, f, info.Size()); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		files++
		return nil
	})
	return files, err
}

// extractCache writes the entries of a cache archive that lie under the
// stage's cache paths into the workspace and the home directory, and
// returns how many files it wrote.
func extractCache(r io.Reader, sc *stageCache) (int, error) {
	zr, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
	if err != nil {
		return 0, err
	}
	defer zr.Close()
	roots := map[string]*os.Root{}
	defer func() {
		for _, root := range roots {
			root.Close()
		}
	}()
	places := sc.places()
	files := 0
	tr := tar.NewReader(zr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files, nil
		}
		if err != nil {
			return files, fmt.Errorf("archive: %w", err)
		}
		prefix, name, ok := strings.Cut(strings.TrimSuffix(hdr.Name, "/"), "/")
		if !ok || !wanted(places, prefix, name) {
			continue
		}
		root := roots[prefix]
		if root == nil {
			dir := sc.dir
			if prefix == archiveHome {
				dir = sc.home
			}
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return files, err
			}
			if root, err = os.OpenRoot(dir); err != nil {
				return files, err
			}
			roots[prefix] = root
		}
		if err := extractOne(root, name, hdr, tr); err != nil {
			return files, fmt.Errorf("%s: %w", filepath.Join(root.Name(), name), err)
		}
		if hdr.Typeflag == tar.TypeReg {
			files++
		}
	}
}

// wanted reports whether an archive entry lies under one of the places.
func wanted(places []cachePlace, prefix, name string) bool {
	for _, pl := range places {
		if pl.prefix == prefix && (pl.rel == "." || name == pl.rel || strings.HasPrefix(name, pl.rel+"/")) {
			return true
		}
	}
	return false
}

// extractOne writes one archive entry at name in root.
func extractOne(root *os.Root, name string, hdr *tar.Header, r io.Reader) error {
	if d := path.Dir(name); d != "." {
		if err := root.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	mode := hdr.FileInfo().Mode().Perm()
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := root.MkdirAll(name, 0o755); err != nil {
			return err
		}
		return root.Chmod(name, mode|0o700)
	case tar.TypeSymlink:
		if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return root.Symlink(hdr.Linkname, name)
	case tar.TypeReg:
		// Removed first, so a symlink in its place is replaced, not
		// written through.
		if err := root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode|0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = root.Chtimes(name, hdr.ModTime, hdr.ModTime)
		}
		return err
	}
	return nil // other kinds are never archived
}
