package objectstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/subjects"
)

// readWithin reads r to its end in a goroutine of its own and returns
// the error, failing the test when that takes longer than d.
func readWithin(t *testing.T, r io.ReadCloser, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := io.ReadAll(r)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		r.Close()
		<-done
		t.Fatalf("the read still waits after %s", d)
		return nil
	}
}

// A read whose chunks never come (an object whose chunks are gone, a
// server that falls silent) fails with ErrStalled after the stall
// timeout instead of waiting for ever.
func TestAReadFailsWhenTheServerFallsSilent(t *testing.T) {
	b, ctx := openBus(t)
	bk, err := openBucket(ctx, b.JS, subjects.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := bk.obs.Put(ctx, jetstream.ObjectMeta{Name: "silent"}, bytes.NewReader(randomBytes(t, 1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.JS.Stream(ctx, "OBJ_"+subjects.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject("$O."+subjects.ArtifactsBucket+".C."+info.NUID)); err != nil {
		t.Fatal(err)
	}
	const stall = 300 * time.Millisecond
	r, err := bk.open(context.Background(), "silent", "artifact silent", stall)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := readWithin(t, r, 30*stall); !errors.Is(err, ErrStalled) {
		t.Fatalf("read of an object whose chunks are gone: %v, want ErrStalled", err)
	}

	// A connection lost mid-read ends the read at once.
	if _, err := bk.obs.Put(ctx, jetstream.ObjectMeta{Name: "cut"}, bytes.NewReader(randomBytes(t, 1<<20))); err != nil {
		t.Fatal(err)
	}
	r, err = bk.open(context.Background(), "cut", "artifact cut", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadFull(r, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	b.Conn.Close()
	if err := readWithin(t, r, 10*time.Second); err == nil {
		t.Fatal("read after the connection closed ended without an error")
	}
}
