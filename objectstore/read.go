package objectstore

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Read limits.
const (
	// StallTimeout is how long a read of an artifact or a cache archive
	// waits for the server's next chunk before it fails with ErrStalled.
	StallTimeout = 30 * time.Second
	// readBuffer bounds the chunks a read holds ahead of its reader.
	readBuffer = 4 << 20
)

// ErrStalled is returned by a read of an object when the server sent
// nothing for StallTimeout.
var ErrStalled = errors.New("no data from the server")

// bucket is an Object Store bucket, with the stream under it for reads.
//
// Objects are read from the bucket's stream (OBJ_<bucket>, chunks on
// $O.<bucket>.C.<nuid>, the Object Store's layout, ADR-20) through an
// ordered pull consumer rather than ObjectStore.Get, whose read of an
// object is cut at the client's default timeout (5 s) unless its
// context has a deadline, cannot be interrupted while the server is
// silent, and holds up to the server's flow-control window (32 MiB)
// ahead of its reader.
type bucket struct {
	js   jetstream.JetStream
	obs  jetstream.ObjectStore
	name string
}

func openBucket(ctx context.Context, js jetstream.JetStream, name string) (bucket, error) {
	obs, err := js.ObjectStore(ctx, name)
	if err != nil {
		return bucket{}, fmt.Errorf("object store %s: %w", name, err)
	}
	return bucket{js: js, obs: obs, name: name}, nil
}

// open opens the object name for a streamed read, label naming it in
// errors; jetstream.ErrObjectNotFound when there is none. The read ends
// with ctx, or with ErrStalled when the server sends nothing for stall.
func (b bucket) open(ctx context.Context, name, label string, stall time.Duration) (*objectReader, error) {
	info, err := b.obs.GetInfo(ctx, name)
	if err != nil {
		return nil, err
	}
	if info.Opts != nil && info.Opts.Link != nil {
		return nil, fmt.Errorf("%s: a link, not an object", label)
	}
	want, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil {
		return nil, fmt.Errorf("%s: digest %q: %w", label, info.Digest, err)
	}
	r := &objectReader{info: info, label: label, ctx: ctx, stall: stall, left: info.Size, want: want, sum: sha256.New()}
	if info.Size == 0 {
		return r, nil
	}
	cons, err := b.js.OrderedConsumer(ctx, "OBJ_"+b.name, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"$O." + b.name + ".C." + info.NUID},
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	if r.it, err = cons.Messages(jetstream.PullMaxBytes(readBuffer)); err != nil {
		return nil, fmt.Errorf("%s: %w", label, err)
	}
	return r, nil
}

// objectReader streams one object's chunks in order, computing their
// SHA-256; at the end it returns io.EOF, or ErrDigest when the bytes do
// not match the object's digest.
type objectReader struct {
	info  *jetstream.ObjectInfo
	label string
	ctx   context.Context
	stall time.Duration
	it    jetstream.MessagesContext // nil for an empty object
	chunk []byte                    // the rest of the current chunk
	left  uint64                    // bytes still to come
	want  []byte                    // the recorded digest
	sum   hash.Hash
	err   error // sticky
}

// Read reads the content.
func (r *objectReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for len(r.chunk) == 0 {
		if r.left == 0 {
			r.err = io.EOF
			if !bytes.Equal(r.sum.Sum(nil), r.want) {
				r.err = fmt.Errorf("%s: %w", r.label, ErrDigest)
			}
			return 0, r.err
		}
		if r.err = r.next(); r.err != nil {
			return 0, r.err
		}
	}
	n := copy(p, r.chunk)
	r.chunk = r.chunk[n:]
	return n, nil
}

// next takes the next chunk.
func (r *objectReader) next() error {
	ctx, cancel := context.WithTimeout(r.ctx, r.stall)
	defer cancel()
	m, err := r.it.Next(jetstream.NextContext(ctx))
	switch {
	case err != nil && r.ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w for %s, %d of %d bytes read", r.label, ErrStalled, r.stall, r.info.Size-r.left, r.info.Size)
	case err != nil:
		return fmt.Errorf("%s: %w", r.label, err)
	}
	data := m.Data()
	if uint64(len(data)) > r.left {
		return fmt.Errorf("%s: chunks longer than its size, %d bytes: %w", r.label, r.info.Size, ErrDigest)
	}
	r.sum.Write(data)
	r.left -= uint64(len(data))
	r.chunk = data
	return nil
}

// Close ends the read.
func (r *objectReader) Close() error {
	if r.it != nil {
		r.it.Stop()
	}
	if r.err == nil {
		r.err = fmt.Errorf("%s: read after close", r.label)
	}
	return nil
}
