package test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/weft-ci/weft/internal/busybox"
)

// Registry is a pull-only OCI distribution registry on a loopback port,
// serving images built in memory, with a delay per blob to make pulls
// slow on purpose. containerd's client pulls loopback registries over
// plain HTTP, so it needs no TLS.
type Registry struct {
	// Host is the registry's host:port, the first part of its image
	// references.
	Host string

	srv  *httptest.Server
	done chan struct{} // closed when the test ends: delays give up

	mu        sync.Mutex               // guards the maps below
	manifests map[string][]byte        // by "<repo>:<tag>" and "<repo>@<digest>"
	blobs     map[string][]byte        // by digest
	delays    map[string]time.Duration // by blob digest
	fetches   map[string]int           // GET requests served, by blob digest
}

// StartRegistry starts a registry and stops it when the test ends.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	r := &Registry{
		done:      make(chan struct{}),
		manifests: map[string][]byte{},
		blobs:     map[string][]byte{},
		delays:    map[string]time.Duration{},
		fetches:   map[string]int{},
	}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	r.Host = strings.TrimPrefix(r.srv.URL, "http://")
	t.Cleanup(func() {
		close(r.done)
		r.srv.Close()
	})
	return r
}

// Delay makes every request for the blob with digest wait d before it is
// answered.
func (r *Registry) Delay(digest string, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.delays[digest] = d
}

// Fetches returns how often the blob with digest was downloaded.
func (r *Registry) Fetches(digest string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fetches[digest]
}

// ociDescriptor is an OCI content descriptor, with the fields a pull reads.
type ociDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
}

// ociManifest is an OCI image manifest.
type ociManifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Config        ociDescriptor   `json:"config"`
	Layers        []ociDescriptor `json:"layers"`
}

// AddBusybox serves the busybox test image (internal/busybox) as repo:tag
// with one more layer, unique to this call, on top: containerd already
// holds the busybox layer once another test imported it, and a pull
// downloads only what it lacks. It returns the image reference and the
// digest of the unique layer, which every pull of the image downloads.
// The image is removed from containerd when the test ends.
func (r *Registry) AddBusybox(t testing.TB, repo, tag string) (ref, layer string) {
	t.Helper()
	var archive bytes.Buffer
	if err := busybox.Write(&archive, "/bin/busybox"); err != nil {
		t.Fatalf("build busybox image: %v", err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(&archive)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read busybox archive: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("read busybox archive %s: %v", h.Name, err)
		}
		files[h.Name] = data
	}
	blob := func(digest string) []byte {
		data, ok := files["blobs/sha256/"+strings.TrimPrefix(digest, "sha256:")]
		if !ok {
			t.Fatalf("busybox archive has no blob %s", digest)
		}
		return data
	}
	var idx struct {
		Manifests []ociDescriptor `json:"manifests"`
	}
	if err := json.Unmarshal(files["index.json"], &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("busybox archive index: %v (%d manifests)", err, len(idx.Manifests))
	}
	var mf ociManifest
	if err := json.Unmarshal(blob(idx.Manifests[0].Digest), &mf); err != nil {
		t.Fatalf("busybox manifest: %v", err)
	}

	// The unique layer: one file holding a fresh ULID.
	var layerTar bytes.Buffer
	tw := tar.NewWriter(&layerTar)
	nonce := []byte(ulid.Make().String() + "\n")
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "etc/weft-nonce", Mode: 0o644, Size: int64(len(nonce)), ModTime: time.Unix(0, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write(nonce); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var layerGz bytes.Buffer
	gz := gzip.NewWriter(&layerGz)
	if _, err := gz.Write(layerTar.Bytes()); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}

	// The config lists the uncompressed digest of every layer.
	var cfg map[string]any
	if err := json.Unmarshal(blob(mf.Config.Digest), &cfg); err != nil {
		t.Fatalf("busybox config: %v", err)
	}
	rootfs, _ := cfg["rootfs"].(map[string]any)
	diffIDs, _ := rootfs["diff_ids"].([]any)
	if rootfs == nil || len(diffIDs) != 1 {
		t.Fatalf("busybox config rootfs = %v, want one diff id", cfg["rootfs"])
	}
	rootfs["diff_ids"] = append(diffIDs, sha256Digest(layerTar.Bytes()))
	cfgData, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	add := func(mediaType string, data []byte) ociDescriptor {
		d := ociDescriptor{MediaType: mediaType, Digest: sha256Digest(data), Size: int64(len(data))}
		r.blobs[d.Digest] = data
		return d
	}
	for _, l := range mf.Layers {
		add(l.MediaType, blob(l.Digest))
	}
	unique := add(mf.Layers[0].MediaType, layerGz.Bytes())
	mf.Config = add(mf.Config.MediaType, cfgData)
	mf.Layers = append(mf.Layers, unique)
	mfData, err := json.Marshal(mf)
	if err != nil {
		t.Fatal(err)
	}
	r.manifests[repo+":"+tag] = mfData
	r.manifests[repo+"@"+sha256Digest(mfData)] = mfData

	ref = r.Host + "/" + repo + ":" + tag
	t.Cleanup(func() {
		// Best effort: the image may never have been pulled.
		_ = exec.Command("ctr", "--address", ContainerdAddress(), "-n", "weft", "images", "rm", ref).Run()
	})
	return ref, unique.Digest
}

// sha256Digest returns the OCI digest of data.
func sha256Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// serve answers the pull side of the OCI distribution API: GET /v2/, and
// GET or HEAD of /v2/<repo>/manifests/<tag or digest> and
// /v2/<repo>/blobs/<digest>.
func (r *Registry) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		http.Error(w, "pull only", http.StatusMethodNotAllowed)
		return
	}
	path := strings.TrimPrefix(req.URL.Path, "/v2/")
	if path == "" || path == req.URL.Path {
		w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
		return
	}
	if repo, ref, ok := strings.Cut(path, "/manifests/"); ok {
		sep := ":"
		if strings.HasPrefix(ref, "sha256:") {
			sep = "@"
		}
		r.mu.Lock()
		data, found := r.manifests[repo+sep+ref]
		r.mu.Unlock()
		if !found {
			http.Error(w, `{"errors":[{"code":"MANIFEST_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		r.write(w, req, "application/vnd.oci.image.manifest.v1+json", data)
		return
	}
	if _, digest, ok := strings.Cut(path, "/blobs/"); ok {
		r.mu.Lock()
		data, found := r.blobs[digest]
		delay := r.delays[digest]
		if found && req.Method == http.MethodGet {
			r.fetches[digest]++
		}
		r.mu.Unlock()
		if !found {
			http.Error(w, `{"errors":[{"code":"BLOB_UNKNOWN"}]}`, http.StatusNotFound)
			return
		}
		if delay > 0 {
			timer := time.NewTimer(delay)
			defer timer.Stop()
			select {
			case <-timer.C:
			case <-req.Context().Done():
				return
			case <-r.done:
				return
			}
		}
		r.write(w, req, "application/octet-stream", data)
		return
	}
	http.NotFound(w, req)
}

// write answers with content data and its digest.
func (r *Registry) write(w http.ResponseWriter, req *http.Request, mediaType string, data []byte) {
	w.Header().Set("Content-Type", mediaType)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	w.Header().Set("Docker-Content-Digest", sha256Digest(data))
	if req.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(data) // an error means the client went away
}
