package objectstore

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"github.com/weft-ci/weft/subjects"
)

// This file holds signed artifact download URLs: an HMAC-SHA256 over the
// artifact's name, when it was stored and when the URL expires, with a
// key kept in the fleet (KV weft_keys), and the HTTP handler that serves
// them.

// SigningKey is a key that signs artifact URLs.
type SigningKey struct {
	// ID names the key in the URLs it signs.
	ID     string `json:"id"`
	Secret []byte `json:"secret"`
}

// Keys reads and rotates the fleet's URL signing keys.
type Keys struct{ kv jetstream.KeyValue }

// OpenKeys opens the keys bucket, which bus.Provision creates.
func OpenKeys(ctx context.Context, js jetstream.JetStream) (*Keys, error) {
	kv, err := js.KeyValue(ctx, subjects.KeysBucket)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", subjects.KeysBucket, err)
	}
	return &Keys{kv: kv}, nil
}

func newSigningKey() SigningKey {
	secret := make([]byte, 32)
	_, _ = rand.Read(secret) // never fails (crypto/rand)
	return SigningKey{ID: ulid.Make().String(), Secret: secret}
}

func (k *Keys) read(ctx context.Context, key string) (SigningKey, uint64, error) {
	e, err := k.kv.Get(ctx, key)
	if err != nil {
		return SigningKey{}, 0, err
	}
	var sk SigningKey
	if err := json.Unmarshal(e.Value(), &sk); err != nil || len(sk.Secret) == 0 {
		return SigningKey{}, 0, fmt.Errorf("signing key %s is malformed", key)
	}
	return sk, e.Revision(), nil
}

// Current returns the current signing key, creating one the first time
// (create-only: two first callers end with the same key).
func (k *Keys) Current(ctx context.Context) (SigningKey, error) {
	sk, _, err := k.read(ctx, subjects.ArtifactURLKey)
	if err == nil {
		return sk, nil
	}
	if !errors.Is(err, jetstream.ErrKeyNotFound) {
		return SigningKey{}, err
	}
	sk = newSigningKey()
	data, _ := json.Marshal(sk)
	if _, err := k.kv.Create(ctx, subjects.ArtifactURLKey, data); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return SigningKey{}, fmt.Errorf("create signing key: %w", err)
	}
	sk, _, err = k.read(ctx, subjects.ArtifactURLKey)
	return sk, err
}

// Rotate makes a new current key; the one it replaces keeps verifying
// the URLs it signed until the next rotation.
func (k *Keys) Rotate(ctx context.Context) (SigningKey, error) {
	old, rev, err := k.read(ctx, subjects.ArtifactURLKey)
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return SigningKey{}, err
	}
	if err == nil {
		data, _ := json.Marshal(old)
		if _, err := k.kv.Put(ctx, subjects.ArtifactURLPreviousKey, data); err != nil {
			return SigningKey{}, fmt.Errorf("keep the previous signing key: %w", err)
		}
	}
	sk := newSigningKey()
	data, _ := json.Marshal(sk)
	if rev == 0 {
		_, err = k.kv.Create(ctx, subjects.ArtifactURLKey, data)
	} else {
		_, err = k.kv.Update(ctx, subjects.ArtifactURLKey, data, rev)
	}
	if err != nil {
		return SigningKey{}, fmt.Errorf("rotate the signing key (rotated meanwhile?): %w", err)
	}
	return sk, nil
}

// verifying returns the key named id: the current one or the previous.
func (k *Keys) verifying(ctx context.Context, id string) ([]byte, bool) {
	for _, key := range []string{subjects.ArtifactURLKey, subjects.ArtifactURLPreviousKey} {
		if sk, _, err := k.read(ctx, key); err == nil && sk.ID == id {
			return sk.Secret, true
		}
	}
	return nil, false
}

// signature is the hex HMAC-SHA256 of an artifact URL's fields.
func signature(secret []byte, name string, stored, expires int64, kid string) string {
	m := hmac.New(sha256.New, secret)
	fmt.Fprintf(m, "%s\n%d\n%d\n%s", name, stored, expires, kid)
	return hex.EncodeToString(m.Sum(nil))
}

// URLPrefix is the path under which the handler serves artifacts.
const URLPrefix = "/artifacts/"

// SignURL returns a download URL of artifact a under base (the handler's
// address, such as http://ci:8080), valid until expires.
func SignURL(key SigningKey, base string, a Artifact, expires time.Time) (string, error) {
	name, err := Name(a.Run, a.Stage, a.Path)
	if err != nil {
		return "", err
	}
	q := url.Values{}
	q.Set("stored", strconv.FormatInt(a.Stored.Unix(), 10))
	q.Set("expires", strconv.FormatInt(expires.Unix(), 10))
	q.Set("kid", key.ID)
	q.Set("sig", signature(key.Secret, name, a.Stored.Unix(), expires.Unix(), key.ID))
	escaped := make([]string, 0, 4)
	for _, part := range strings.Split(name, "/") {
		escaped = append(escaped, url.PathEscape(part))
	}
	return strings.TrimRight(base, "/") + URLPrefix + strings.Join(escaped, "/") + "?" + q.Encode(), nil
}

// Handler serves signed artifact URLs (GET and HEAD under URLPrefix):
// 200 with Content-Length, Content-Type, Content-Disposition and the
// digest (Digest: sha-256=..., X-Weft-SHA256); 206 for a single byte
// range; 403 for a signature that does not verify or has expired; 410
// for an artifact past the retention keep; 404 for one the store does not
// hold. now is the clock (time.Now).
func Handler(store *Store, keys *Keys, keep time.Duration, now func() time.Time) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		name := strings.TrimPrefix(r.URL.Path, URLPrefix)
		parts := strings.SplitN(name, "/", 3)
		if !strings.HasPrefix(r.URL.Path, URLPrefix) || len(parts) != 3 {
			http.Error(w, "not an artifact URL: want "+URLPrefix+"<run>/<stage>/<path>", http.StatusNotFound)
			return
		}
		run, stage, p := parts[0], parts[1], parts[2]
		clean, err := Name(run, stage, p)
		if err != nil || clean != name {
			http.Error(w, "bad artifact name", http.StatusNotFound)
			return
		}
		q := r.URL.Query()
		stored, err1 := strconv.ParseInt(q.Get("stored"), 10, 64)
		expires, err2 := strconv.ParseInt(q.Get("expires"), 10, 64)
		secret, ok := keys.verifying(r.Context(), q.Get("kid"))
		if err1 != nil || err2 != nil || !ok || !hmac.Equal([]byte(signature(secret, name, stored, expires, q.Get("kid"))), []byte(q.Get("sig"))) {
			http.Error(w, "signature does not verify", http.StatusForbidden)
			return
		}
		t := now()
		if t.Unix() > expires {
			http.Error(w, "URL expired at "+time.Unix(expires, 0).UTC().Format(time.RFC3339), http.StatusForbidden)
			return
		}
		if keep > 0 && t.After(time.Unix(stored, 0).Add(keep)) {
			http.Error(w, "artifact removed at the end of its retention", http.StatusGone)
			return
		}
		rd, err := store.Get(r.Context(), run, stage, p)
		if errors.Is(err, ErrNotFound) {
			http.Error(w, "no such artifact", http.StatusNotFound)
			return
		}
		if err != nil {
			http.Error(w, "artifact store: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer rd.Close()
		serve(w, r, rd)
	})
}

// serve writes an artifact's response: whole, or one byte range.
func serve(w http.ResponseWriter, r *http.Request, rd *Reader) {
	a := rd.Artifact
	h := w.Header()
	ctype := mime.TypeByExtension(path.Ext(a.Path))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	h.Set("Content-Type", ctype)
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(a.Path)}))
	h.Set("Accept-Ranges", "bytes")
	h.Set("X-Weft-SHA256", a.SHA256)
	if sum, err := hex.DecodeString(a.SHA256); err == nil {
		h.Set("Digest", "sha-256="+base64.StdEncoding.EncodeToString(sum))
	}
	start, end, ranged, ok := byteRange(r.Header.Get("Range"), a.Size)
	if !ok {
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", a.Size))
		http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	status := http.StatusOK
	if ranged {
		status = http.StatusPartialContent
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end, a.Size))
	}
	h.Set("Content-Length", strconv.FormatInt(end-start+1, 10))
	w.WriteHeader(status)
	if r.Method == http.MethodHead || a.Size == 0 {
		return
	}
	// The store streams from the start: skip to the range.
	if _, err := io.CopyN(io.Discard, rd, start); err != nil {
		return
	}
	_, _ = io.CopyN(w, rd, end-start+1)
}

// byteRange reads a Range header of one range over size bytes: the first
// and last byte, whether a range was asked, and false when it cannot be
// served. Several ranges are served whole (a 200), as RFC 9110 allows.
func byteRange(h string, size int64) (start, end int64, ranged, ok bool) {
	if h == "" || strings.Contains(h, ",") || !strings.HasPrefix(h, "bytes=") {
		return 0, size - 1, false, true
	}
	spec := strings.TrimPrefix(h, "bytes=")
	from, to, found := strings.Cut(spec, "-")
	if !found {
		return 0, size - 1, false, true
	}
	switch {
	case from == "": // the last n bytes
		n, err := strconv.ParseInt(to, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false, false
		}
		return max(size-n, 0), size - 1, true, size > 0
	default:
		s, err := strconv.ParseInt(from, 10, 64)
		if err != nil || s < 0 || s >= size {
			return 0, 0, false, false
		}
		e := size - 1
		if to != "" {
			if e, err = strconv.ParseInt(to, 10, 64); err != nil || e < s {
				return 0, 0, false, false
			}
			e = min(e, size-1)
		}
		return s, e, true, true
	}
}
