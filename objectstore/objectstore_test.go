package objectstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/objectstore"
	"github.com/weft-ci/weft/subjects"
	"github.com/weft-ci/weft/test"
)

func open(t *testing.T, limits objectstore.Limits) (*objectstore.Store, jetstream.JetStream, context.Context) {
	t.Helper()
	b := test.Bus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	s, err := objectstore.Open(ctx, b.JS, limits)
	if err != nil {
		t.Fatal(err)
	}
	return s, b.JS, ctx
}

// stored returns the messages the artifacts bucket's stream holds.
func stored(t *testing.T, ctx context.Context, js jetstream.JetStream) uint64 {
	t.Helper()
	st, err := js.Stream(ctx, "OBJ_"+subjects.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().State.Msgs
}

// An artifact of several chunks streams in and out unchanged, with the
// SHA-256 of its bytes recorded.
func TestAnArtifactRoundTripsWithItsDigest(t *testing.T) {
	s, _, ctx := open(t, objectstore.Limits{})
	data := make([]byte, 3<<20+17) // several 128 KiB chunks and a partial one
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	a, err := s.Put(ctx, "01RUN", "build", "./bin/app", bytes.NewReader(data), 0)
	if err != nil {
		t.Fatal(err)
	}
	want := objectstore.Artifact{Run: "01RUN", Stage: "build", Path: "bin/app", Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
	a.Stored = time.Time{}
	if a != want {
		t.Fatalf("Put = %+v, want %+v", a, want)
	}
	r, err := s.Get(ctx, "01RUN", "build", "bin/app")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) || r.Artifact.SHA256 != want.SHA256 || r.Artifact.Size != want.Size {
		t.Fatalf("Get returned %d bytes (equal %t), artifact %+v", len(got), bytes.Equal(got, data), r.Artifact)
	}
	if st, err := s.Stat(ctx, "01RUN", "build", "bin/app"); err != nil || st.SHA256 != want.SHA256 {
		t.Fatalf("Stat = %+v, %v", st, err)
	}
	if _, err := s.Get(ctx, "01RUN", "build", "bin/other"); !errors.Is(err, objectstore.ErrNotFound) {
		t.Fatalf("Get of a missing artifact: %v, want ErrNotFound", err)
	}
}

// Content changed in the store after it was recorded fails the read at
// its end.
func TestAReadOfAlteredContentFailsItsDigest(t *testing.T) {
	s, js, ctx := open(t, objectstore.Limits{})
	data := bytes.Repeat([]byte("weft"), 1000)
	if _, err := s.Put(ctx, "01RUN", "build", "out.txt", bytes.NewReader(data), 0); err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(ctx, subjects.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := obs.GetInfo(ctx, "01RUN/build/out.txt")
	if err != nil {
		t.Fatal(err)
	}
	// Replace the one chunk with bytes of the same length.
	st, err := js.Stream(ctx, "OBJ_"+subjects.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	chunks := "$O." + subjects.ArtifactsBucket + ".C." + info.NUID
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(chunks)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, chunks, bytes.ToUpper(data)); err != nil {
		t.Fatal(err)
	}
	r, err := s.Get(ctx, "01RUN", "build", "out.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadAll(r); !errors.Is(err, objectstore.ErrDigest) {
		t.Fatalf("reading altered content: %v, want ErrDigest", err)
	}
}

// A path that leaves the workspace, or is absolute or empty, is refused
// with the path named, and nothing is stored.
func TestPathsOutsideTheWorkspaceAreRefused(t *testing.T) {
	s, js, ctx := open(t, objectstore.Limits{})
	before := stored(t, ctx, js)
	for _, p := range []string{"../x", "/etc/passwd", "a/../../b", "..", "", ".", `\windows`} {
		_, err := s.Put(ctx, "01RUN", "build", p, strings.NewReader("x"), 0)
		if err == nil {
			t.Errorf("Put(%q) stored it", p)
			continue
		}
		if p != "" && !strings.Contains(err.Error(), p) {
			t.Errorf("Put(%q): %v, want the path named", p, err)
		}
	}
	if got := stored(t, ctx, js); got != before {
		t.Errorf("the bucket holds %d messages after the refusals, %d before", got, before)
	}
	if c, err := objectstore.CleanPath("a/./b//c"); err != nil || c != "a/b/c" {
		t.Errorf("CleanPath(a/./b//c) = %q, %v", c, err)
	}
}

// An artifact over the file limit, or taking its run over the run limit,
// is refused naming the file, its size and the limit, and what streamed
// in before the refusal is purged.
func TestArtifactsOverALimitAreRefusedAndLeaveNothing(t *testing.T) {
	s, js, ctx := open(t, objectstore.Limits{File: 300 << 10, Run: 1 << 20})
	before := stored(t, ctx, js)
	big := bytes.Repeat([]byte{1}, 400<<10) // several chunks: some were stored when it passed the limit
	_, err := s.Put(ctx, "01RUN", "build", "dist/big.tar", bytes.NewReader(big), 0)
	var le *objectstore.LimitError
	if !errors.As(err, &le) || le.Path != "dist/big.tar" || le.Scope != "per file" {
		t.Fatalf("Put over the file limit: %v, want a per-file LimitError", err)
	}
	if want := "artifact dist/big.tar: over 300 KiB, over the limit of 300 KiB per file"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
	if _, err := s.Stat(ctx, "01RUN", "build", "dist/big.tar"); !errors.Is(err, objectstore.ErrNotFound) {
		t.Errorf("Stat after the refusal: %v, want ErrNotFound", err)
	}
	if got := stored(t, ctx, js); got != before {
		t.Errorf("the bucket holds %d messages after the refusal, %d before: chunks left behind", got, before)
	}
	// The run limit counts what the run stored already.
	_, err = s.Put(ctx, "01RUN", "build", "dist/b.tar", bytes.NewReader(big[:200<<10]), 900<<10)
	if !errors.As(err, &le) || le.Scope != "per run" || !strings.Contains(err.Error(), "dist/b.tar") || !strings.Contains(err.Error(), "1 MiB per run") {
		t.Fatalf("Put over the run limit: %v, want a per-run LimitError naming the file and the limit", err)
	}
	// A size known in advance is refused before anything streams.
	err = s.Limits().Check("dist/big.tar", int64(len(big)), 0)
	if want := "artifact dist/big.tar: 400 KiB, over the limit of 300 KiB per file"; err == nil || err.Error() != want {
		t.Errorf("Check: %v, want %q", err, want)
	}
	if _, err := s.Put(ctx, "01RUN", "build", "dist/ok.tar", bytes.NewReader(big[:300<<10]), 0); err != nil {
		t.Errorf("Put of exactly the file limit: %v", err)
	}
}

// A read may take longer than the JetStream client's default timeout
// (5 s; 200 ms here), which the client gives a whole object read whose
// context has no deadline: the agent's restore, `weft artifacts get` and
// the download handler read with such contexts, and a large artifact or a
// slow reader takes longer than that. It still gets every byte.
func TestAReadOutlastsTheClientsDefaultTimeout(t *testing.T) {
	b := test.Bus(t)
	js, err := jetstream.New(b.Conn, jetstream.WithDefaultTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background() // no deadline, like the callers'
	s, err := objectstore.Open(ctx, js, objectstore.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "01RUN", "build", "big", bytes.NewReader(data), 0); err != nil {
		t.Fatal(err)
	}
	r, err := s.Get(ctx, "01RUN", "build", "big")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	head := make([]byte, 1)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	// The reader is slow: it reads on after more than the timeout.
	<-time.After(500 * time.Millisecond)
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading on after the client's default timeout: %v", err)
	}
	if !bytes.Equal(append(head, rest...), data) {
		t.Fatalf("read %d bytes, not the %d stored", 1+len(rest), len(data))
	}
}
