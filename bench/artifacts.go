package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/internal/bytesize"
	"github.com/weft-ci/weft/internal/procs"
	"github.com/weft-ci/weft/objectstore"
	"github.com/weft-ci/weft/subjects"
)

// Default sizes of the artifacts benchmark.
const (
	// DefaultArtifactSize is the artifact each round moves: 256 MiB.
	DefaultArtifactSize int64 = 256 << 20
	// DefaultArtifactRounds is how many rounds are measured: 5.
	DefaultArtifactRounds = 5
	// DefaultArtifactBig is the artifact whose memory is measured: 1 GiB.
	DefaultArtifactBig int64 = 1 << 30
)

// ArtifactsOptions size the artifacts benchmark. Zero values take the
// defaults.
type ArtifactsOptions struct {
	// Size is the artifact each of Rounds rounds stores and reads back,
	// through weft and raw (DefaultArtifactSize, DefaultArtifactRounds).
	Size   int64
	Rounds int
	// Big is the artifact stored and read back once each way while the
	// resident memory is watched (DefaultArtifactBig).
	Big int64
	// Weft is the weft binary whose server is measured; default this
	// executable.
	Weft string
	// Progress receives one line per step; nil discards them.
	Progress func(format string, args ...any)
}

// Transfer is one artifact moved one way: its rate and, for the big
// artifact, how much more memory the process that moved it held at its
// peak than before.
type Transfer struct {
	// Rate is in bytes per second, the median over the rounds.
	Rate float64 `json:"bytes_per_s"`
	// Growth is the peak resident set size while it moved over the
	// resident set size before, in bytes; set for the big artifact only.
	Growth int64 `json:"rss_growth_bytes,omitempty"`
}

// ArtifactsResult compares weft's artifact store (objectstore.Store: its
// names, size limits, metadata and digest checks) with the JetStream
// Object Store it is built on, used raw on the same bucket, against a
// weft server process: files read from and written to disk both ways.
type ArtifactsResult struct {
	Size   int64 `json:"size_bytes"`
	Rounds int   `json:"rounds"`
	// Put and Get are weft's; RawPut and RawGet the raw Object Store's.
	Put    Transfer `json:"put"`
	Get    Transfer `json:"get"`
	RawPut Transfer `json:"raw_put"`
	RawGet Transfer `json:"raw_get"`
	// PutRatio and GetRatio are weft's rates over the raw ones (1 is as
	// fast as raw).
	PutRatio float64 `json:"put_ratio"`
	GetRatio float64 `json:"get_ratio"`
	// Big is the artifact size of the memory figures: BigPut and BigGet
	// (weft) and BigRawPut and BigRawGet (raw), with their rates and the
	// growth of this process's memory, and the server's growth while
	// weft stored it.
	Big          int64    `json:"big_bytes"`
	BigPut       Transfer `json:"big_put"`
	BigGet       Transfer `json:"big_get"`
	BigRawPut    Transfer `json:"big_raw_put"`
	BigRawGet    Transfer `json:"big_raw_get"`
	ServerGrowth int64    `json:"server_rss_growth_bytes"`
	// Wall is the benchmark's whole time.
	Wall time.Duration `json:"wall_ns"`
}

func (o *ArtifactsOptions) defaults() error {
	if o.Size <= 0 {
		o.Size = DefaultArtifactSize
	}
	if o.Rounds <= 0 {
		o.Rounds = DefaultArtifactRounds
	}
	if o.Big <= 0 {
		o.Big = DefaultArtifactBig
	}
	if o.Progress == nil {
		o.Progress = func(string, ...any) {}
	}
	if err := weftBinary(&o.Weft, "bench artifacts"); err != nil {
		return err
	}
	return nil
}

// mover stores a file as an artifact and reads it back into a file, by
// weft's store or by the raw Object Store.
type mover struct {
	name string
	put  func(ctx context.Context, key string, f *os.File) (sha string, err error)
	get  func(ctx context.Context, key string, w io.Writer) (int64, error)
	del  func(ctx context.Context, key string) error
}

// Artifacts runs the artifacts benchmark: a warm-up round, then Rounds
// rounds, each storing an
// artifact of Size from a file and reading it back into a file through
// weft and raw, the order alternating per round; then the Big artifact
// each way once, with the peak resident memory of this process (and of
// the server) reset before each move and read after it.
func Artifacts(ctx context.Context, o ArtifactsOptions) (*ArtifactsResult, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	began := time.Now()
	p, err := startServer(ctx, o.Weft, "artifacts")
	if err != nil {
		return nil, fmt.Errorf("bench artifacts: %w", err)
	}
	defer p.stop()
	store, err := objectstore.Open(ctx, p.b.JS, objectstore.Limits{File: max(o.Size, o.Big), Run: max(o.Size, o.Big)})
	if err != nil {
		return nil, fmt.Errorf("bench artifacts: %w", err)
	}
	raw, err := p.b.JS.ObjectStore(ctx, subjects.ArtifactsBucket)
	if err != nil {
		return nil, fmt.Errorf("bench artifacts: %w", err)
	}
	run := newID()
	weft := mover{
		name: "weft",
		put: func(ctx context.Context, key string, f *os.File) (string, error) {
			a, err := store.Put(ctx, run, "bench", key, f, 0)
			return a.SHA256, err
		},
		get: func(ctx context.Context, key string, w io.Writer) (int64, error) {
			r, err := store.Get(ctx, run, "bench", key)
			if err != nil {
				return 0, err
			}
			defer r.Close()
			return io.Copy(w, r)
		},
		del: func(ctx context.Context, key string) error { return store.Delete(ctx, run, "bench", key) },
	}
	rawName := func(key string) string { return "bench-raw/" + run + "/" + key }
	rawMover := mover{
		name: "raw",
		put: func(ctx context.Context, key string, f *os.File) (string, error) {
			info, err := raw.Put(ctx, jetstream.ObjectMeta{Name: rawName(key)}, f)
			if err != nil {
				return "", err
			}
			sum, err := jetstream.DecodeObjectDigest(info.Digest)
			return hex.EncodeToString(sum), err
		},
		get: func(ctx context.Context, key string, w io.Writer) (int64, error) {
			// Without a deadline the client cuts a read at its default
			// timeout (5 s), which a large object outlasts.
			ctx, cancel := context.WithTimeout(ctx, time.Hour)
			defer cancel()
			r, err := raw.Get(ctx, rawName(key))
			if err != nil {
				return 0, err
			}
			defer r.Close()
			return io.Copy(w, r)
		},
		del: func(ctx context.Context, key string) error { return raw.Delete(ctx, rawName(key)) },
	}

	src := filepath.Join(p.dir, "src")
	o.Progress("artifacts: writing a %s file", bytesize.Format(o.Size))
	sum, err := writeRandom(src, o.Size)
	if err != nil {
		return nil, err
	}
	res := &ArtifactsResult{Size: o.Size, Rounds: o.Rounds, Big: o.Big}
	rates := map[string][]float64{}
	// Round 0 warms the store, the page cache and the connection up and
	// is not counted.
	for i := range o.Rounds + 1 {
		order := []mover{weft, rawMover}
		if i%2 == 1 {
			order = []mover{rawMover, weft}
		}
		for _, m := range order {
			key := fmt.Sprintf("round-%d", i)
			put, get, _, err := moveOnce(ctx, m, key, src, sum, o.Size, 0)
			if err != nil {
				return nil, err
			}
			if i == 0 {
				continue
			}
			rates[m.name+" put"] = append(rates[m.name+" put"], put.Rate)
			rates[m.name+" get"] = append(rates[m.name+" get"], get.Rate)
			o.Progress("artifacts: round %d/%d %s: put %s/s, get %s/s", i, o.Rounds, m.name, bytesize.Format(int64(put.Rate)), bytesize.Format(int64(get.Rate)))
		}
	}
	median := func(k string) float64 {
		v := slices.Clone(rates[k])
		slices.Sort(v)
		return v[len(v)/2]
	}
	res.Put.Rate, res.Get.Rate = median("weft put"), median("weft get")
	res.RawPut.Rate, res.RawGet.Rate = median("raw put"), median("raw get")
	res.PutRatio, res.GetRatio = res.Put.Rate/res.RawPut.Rate, res.Get.Rate/res.RawGet.Rate
	if err := os.Remove(src); err != nil {
		return nil, err
	}

	big := filepath.Join(p.dir, "big")
	o.Progress("artifacts: writing a %s file", bytesize.Format(o.Big))
	if sum, err = writeRandom(big, o.Big); err != nil {
		return nil, err
	}
	server := p.server.cmd.Process.Pid
	if res.BigRawPut, res.BigRawGet, _, err = moveOnce(ctx, rawMover, "big", big, sum, o.Big, server); err != nil {
		return nil, err
	}
	if res.BigPut, res.BigGet, res.ServerGrowth, err = moveOnce(ctx, weft, "big", big, sum, o.Big, server); err != nil {
		return nil, err
	}
	o.Progress("artifacts: %s: weft put %s/s, +%s; get %s/s, +%s", bytesize.Format(o.Big),
		bytesize.Format(int64(res.BigPut.Rate)), bytesize.Format(res.BigPut.Growth), bytesize.Format(int64(res.BigGet.Rate)), bytesize.Format(res.BigGet.Growth))
	res.Wall = time.Since(began)
	return res, nil
}

// moveOnce stores the file src (size bytes, SHA-256 sum) under key
// through m, reads it back into a file next to src, checks the digest
// the store recorded and the size read, and deletes the artifact and the
// copy. With a server pid, each Transfer has the growth of this
// process's memory while it moved, and the server's growth while the
// artifact was stored is returned too.
func moveOnce(ctx context.Context, m mover, key, src, sum string, size int64, server int) (put, get Transfer, serverGrowth int64, err error) {
	f, err := os.Open(src)
	if err != nil {
		return put, get, 0, err
	}
	defer f.Close()
	var growth func() ([]int64, error)
	if server != 0 {
		if growth, err = watchMemory(os.Getpid(), server); err != nil {
			return put, get, 0, err
		}
	}
	start := time.Now()
	got, err := m.put(ctx, key, f)
	if err != nil {
		return put, get, 0, fmt.Errorf("bench artifacts: %s put %s: %w", m.name, key, err)
	}
	put.Rate = float64(size) / time.Since(start).Seconds()
	if got != sum {
		return put, get, 0, fmt.Errorf("bench artifacts: %s put %s: stored sha256 %s, the file's is %s", m.name, key, got, sum)
	}
	if growth != nil {
		g, err := growth()
		if err != nil {
			return put, get, 0, err
		}
		put.Growth, serverGrowth = g[0], g[1]
		if growth, err = watchMemory(os.Getpid()); err != nil {
			return put, get, 0, err
		}
	}
	out, err := os.Create(src + ".copy")
	if err != nil {
		return put, get, 0, err
	}
	defer os.Remove(out.Name())
	defer out.Close()
	start = time.Now()
	n, err := m.get(ctx, key, out)
	if err != nil {
		return put, get, 0, fmt.Errorf("bench artifacts: %s get %s: %w", m.name, key, err)
	}
	get.Rate = float64(size) / time.Since(start).Seconds()
	if n != size {
		return put, get, 0, fmt.Errorf("bench artifacts: %s get %s: read %d bytes of %d", m.name, key, n, size)
	}
	if growth != nil {
		g, err := growth()
		if err != nil {
			return put, get, 0, err
		}
		get.Growth = g[0]
	}
	if err := m.del(ctx, key); err != nil {
		return put, get, 0, fmt.Errorf("bench artifacts: %s delete %s: %w", m.name, key, err)
	}
	return put, get, serverGrowth, nil
}

// watchMemory returns the garbage of this process to the system, notes
// the resident set size of each of pids and resets their peaks; the
// function it returns reads how much more each held at its peak since.
func watchMemory(pids ...int) (func() ([]int64, error), error) {
	runtime.GC()
	debug.FreeOSMemory()
	base := make([]int64, len(pids))
	for i, pid := range pids {
		u, err := procs.Of(pid)
		if err != nil {
			return nil, err
		}
		if err := procs.ResetPeak(pid); err != nil {
			return nil, err
		}
		base[i] = u.RSS
	}
	return func() ([]int64, error) {
		growth := make([]int64, len(pids))
		for i, pid := range pids {
			peak, err := procs.Peak(pid)
			if err != nil {
				return nil, err
			}
			growth[i] = max(peak-base[i], 0)
		}
		return growth, nil
	}, nil
}

// writeRandom writes size pseudo-random bytes to a new file at path and
// returns their SHA-256 in hex.
func writeRandom(path string, size int64) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{'w', 'e', 'f', 't'})
	h := sha256.New()
	buf := make([]byte, 1<<20)
	w := io.MultiWriter(f, h)
	for left := size; left > 0; {
		n := min(left, int64(len(buf)))
		_, _ = rng.Read(buf[:n])
		if _, err := w.Write(buf[:n]); err != nil {
			return "", fmt.Errorf("bench artifacts: write %s: %w", path, err)
		}
		left -= n
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("bench artifacts: write %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
