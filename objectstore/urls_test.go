package objectstore_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/objectstore"
)

// A signed URL serves the artifact's bytes with its headers and a byte
// range; a tampered or expired one is refused with 403, an artifact past
// its retention with 410, one the store does not hold with 404; a rotated
// key keeps verifying what it signed, once.
func TestSignedURLs(t *testing.T) {
	s, js, ctx := open(t, objectstore.Limits{})
	keys, err := objectstore.OpenKeys(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789"), 30000) // 300 kB: several chunks
	if _, err := s.Put(ctx, "01RUN", "build", "dist/app.tar.gz", bytes.NewReader(data), 0); err != nil {
		t.Fatal(err)
	}
	a, err := s.Stat(ctx, "01RUN", "build", "dist/app.tar.gz")
	if err != nil {
		t.Fatal(err)
	}
	now := a.Stored.Add(time.Minute)
	srv := httptest.NewServer(objectstore.Handler(s, keys, 24*time.Hour, func() time.Time { return now }))
	defer srv.Close()
	key, err := keys.Current(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := keys.Current(ctx); again.ID != key.ID {
		t.Fatalf("a second Current made another key: %s, %s", key.ID, again.ID)
	}
	sign := func(a objectstore.Artifact, expires time.Time) string {
		t.Helper()
		u, err := objectstore.SignURL(key, srv.URL, a, expires)
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	get := func(u, rng string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res, body
	}
	valid := sign(a, now.Add(10*time.Minute))

	res, body := get(valid, "")
	if res.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("valid URL: %d, %d bytes (equal %t)", res.StatusCode, len(body), bytes.Equal(body, data))
	}
	for h, want := range map[string]string{
		"Content-Length":      "300000",
		"Content-Type":        "application/gzip",
		"Content-Disposition": `attachment; filename=app.tar.gz`,
		"X-Weft-SHA256":       a.SHA256,
	} {
		if got := res.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	res, body = get(valid, "bytes=100005-100014")
	if res.StatusCode != 206 || string(body) != "5678901234" || res.Header.Get("Content-Range") != "bytes 100005-100014/300000" {
		t.Errorf("range: %d %q %q, want 206 5678901234", res.StatusCode, body, res.Header.Get("Content-Range"))
	}
	if res, _ := get(valid, "bytes=400000-"); res.StatusCode != 416 {
		t.Errorf("range past the end: %d, want 416", res.StatusCode)
	}

	tampered := strings.Replace(valid, "expires=", "expires=9", 1)
	if res, _ := get(tampered, ""); res.StatusCode != 403 {
		t.Errorf("tampered expiry: %d, want 403", res.StatusCode)
	}
	other := strings.Replace(valid, "app.tar.gz", "app.tar.gy", 1)
	if res, _ := get(other, ""); res.StatusCode != 403 {
		t.Errorf("another path under the same signature: %d, want 403", res.StatusCode)
	}
	if res, _ := get(sign(a, now.Add(-time.Second)), ""); res.StatusCode != 403 {
		t.Errorf("expired URL: %d, want 403", res.StatusCode)
	}
	old := a
	old.Stored = a.Stored.Add(-25 * time.Hour)
	if res, _ := get(sign(old, now.Add(time.Minute)), ""); res.StatusCode != 410 {
		t.Errorf("artifact past its retention: %d, want 410", res.StatusCode)
	}
	missing := a
	missing.Path = "dist/none"
	if res, _ := get(sign(missing, now.Add(time.Minute)), ""); res.StatusCode != 404 {
		t.Errorf("artifact the store does not hold: %d, want 404", res.StatusCode)
	}

	// Rotation: the replaced key still verifies; after a second rotation
	// it does not.
	if _, err := keys.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if res, _ := get(valid, ""); res.StatusCode != 200 {
		t.Errorf("URL of the previous key after a rotation: %d, want 200", res.StatusCode)
	}
	if _, err := keys.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if res, _ := get(valid, ""); res.StatusCode != 403 {
		t.Errorf("URL of a key two rotations old: %d, want 403", res.StatusCode)
	}
}
