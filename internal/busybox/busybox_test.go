package busybox

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// binary is where Debian's busybox-static package installs busybox.
const binary = "/bin/busybox"

// needBusybox skips the test when binary is missing, or fails it when CI=true.
func needBusybox(t *testing.T) {
	t.Helper()
	if Available(binary) {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is missing; install busybox-static", binary)
	}
	t.Skipf("%s is missing; install busybox-static", binary)
}

// write returns the archive Write produces from binary.
func write(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, binary); err != nil {
		t.Fatalf("Write(%q) = %v", binary, err)
	}
	return buf.Bytes()
}

// readTar returns the regular files and the headers of every entry of a tar.
func readTar(t *testing.T, r io.Reader) (map[string][]byte, map[string]*tar.Header) {
	t.Helper()
	files := map[string][]byte{}
	headers := map[string]*tar.Header{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, headers
		}
		if err != nil {
			t.Fatalf("read tar: %v", err)
		}
		if _, dup := headers[h.Name]; dup {
			t.Fatalf("tar entry %q appears twice", h.Name)
		}
		headers[h.Name] = h
		if h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatalf("read tar entry %s: %v", h.Name, err)
			}
			files[h.Name] = data
		}
	}
}

// desc is the part of an OCI descriptor the tests check.
type desc struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations"`
	Platform    struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
	} `json:"platform"`
}

// blobOf returns the blob d points at, checking its size and digest.
func blobOf(t *testing.T, files map[string][]byte, d desc) []byte {
	t.Helper()
	hexSum, ok := strings.CutPrefix(d.Digest, "sha256:")
	if !ok {
		t.Fatalf("descriptor digest %q is not sha256", d.Digest)
	}
	data, ok := files["blobs/sha256/"+hexSum]
	if !ok {
		t.Fatalf("blob %s (%s) is missing", d.Digest, d.MediaType)
	}
	if int64(len(data)) != d.Size {
		t.Errorf("blob %s has %d bytes, descriptor says %d", d.Digest, len(data), d.Size)
	}
	if got := sha256Digest(data); got != d.Digest {
		t.Errorf("blob %s has digest %s", d.Digest, got)
	}
	return data
}

// sha256Digest returns the OCI sha256 digest of data.
func sha256Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// decode unmarshals data into v or fails the test.
func decode(t *testing.T, name string, data []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(data, v); err != nil {
		t.Fatalf("decode %s: %v\n%s", name, err, data)
	}
}

func TestWriteReproducible(t *testing.T) {
	needBusybox(t)
	if a, b := write(t), write(t); !bytes.Equal(a, b) {
		t.Errorf("two Write calls differ: %d and %d bytes", len(a), len(b))
	}
}

func TestWriteLayout(t *testing.T) {
	needBusybox(t)
	files, _ := readTar(t, bytes.NewReader(write(t)))

	if got, want := string(files["oci-layout"]), `{"imageLayoutVersion":"1.0.0"}`; got != want {
		t.Errorf("oci-layout = %q, want %q", got, want)
	}

	var idx struct {
		SchemaVersion int    `json:"schemaVersion"`
		MediaType     string `json:"mediaType"`
		Manifests     []desc `json:"manifests"`
	}
	decode(t, "index.json", files["index.json"], &idx)
	if idx.SchemaVersion != 2 || idx.MediaType != "application/vnd.oci.image.index.v1+json" {
		t.Errorf("index.json schemaVersion, mediaType = %d, %q", idx.SchemaVersion, idx.MediaType)
	}
	if len(idx.Manifests) != 1 {
		t.Fatalf("index.json has %d manifests, want 1", len(idx.Manifests))
	}
	md := idx.Manifests[0]
	if md.MediaType != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("manifest mediaType = %q", md.MediaType)
	}
	for k, want := range map[string]string{
		"io.containerd.image.name":          Ref,
		"org.opencontainers.image.ref.name": "test",
	} {
		if got := md.Annotations[k]; got != want {
			t.Errorf("manifest annotation %s = %q, want %q", k, got, want)
		}
	}
	if md.Platform.OS != "linux" || md.Platform.Architecture != runtime.GOARCH {
		t.Errorf("manifest platform = %s/%s, want linux/%s", md.Platform.OS, md.Platform.Architecture, runtime.GOARCH)
	}

	var mf struct {
		SchemaVersion int    `json:"schemaVersion"`
		Config        desc   `json:"config"`
		Layers        []desc `json:"layers"`
	}
	decode(t, "manifest", blobOf(t, files, md), &mf)
	if mf.SchemaVersion != 2 {
		t.Errorf("manifest schemaVersion = %d, want 2", mf.SchemaVersion)
	}
	if mf.Config.MediaType != "application/vnd.oci.image.config.v1+json" {
		t.Errorf("config mediaType = %q", mf.Config.MediaType)
	}
	if len(mf.Layers) != 1 {
		t.Fatalf("manifest has %d layers, want 1", len(mf.Layers))
	}
	if mf.Layers[0].MediaType != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Errorf("layer mediaType = %q", mf.Layers[0].MediaType)
	}

	var cfg struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		Config       struct {
			Env        []string `json:"Env"`
			Cmd        []string `json:"Cmd"`
			WorkingDir string   `json:"WorkingDir"`
		} `json:"config"`
		RootFS struct {
			Type    string   `json:"type"`
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	decode(t, "config", blobOf(t, files, mf.Config), &cfg)
	if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
		t.Errorf("config platform = %s/%s, want linux/%s", cfg.OS, cfg.Architecture, runtime.GOARCH)
	}
	c := cfg.Config
	if len(c.Env) != 1 || c.Env[0] != "PATH=/bin" || len(c.Cmd) != 1 || c.Cmd[0] != "/bin/sh" || c.WorkingDir != "/" {
		t.Errorf("config Env, Cmd, WorkingDir = %q, %q, %q, want [PATH=/bin], [/bin/sh], /", c.Env, c.Cmd, c.WorkingDir)
	}

	gz, err := gzip.NewReader(bytes.NewReader(blobOf(t, files, mf.Layers[0])))
	if err != nil {
		t.Fatalf("gunzip layer: %v", err)
	}
	layerTar, err := io.ReadAll(gz)
	if err != nil {
		t.Fatalf("gunzip layer: %v", err)
	}
	if cfg.RootFS.Type != "layers" || len(cfg.RootFS.DiffIDs) != 1 {
		t.Fatalf("config rootfs = %+v, want one layer", cfg.RootFS)
	}
	if got, want := cfg.RootFS.DiffIDs[0], sha256Digest(layerTar); got != want {
		t.Errorf("diff_id = %s, want %s (sha256 of the gunzipped layer)", got, want)
	}

	layer, headers := readTar(t, bytes.NewReader(layerTar))
	bin, err := os.ReadFile(binary)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(layer["bin/busybox"], bin) {
		t.Errorf("bin/busybox differs from %s", binary)
	}
	tests := []struct {
		name     string
		typ      byte
		mode     int64
		linkname string
	}{
		{"bin/busybox", tar.TypeReg, 0o755, ""},
		{"bin/sh", tar.TypeSymlink, 0o777, "busybox"},
		{"bin/ls", tar.TypeSymlink, 0o777, "busybox"},
		{"tmp/", tar.TypeDir, 0o1777, ""},
		{"workspace/", tar.TypeDir, 0o755, ""},
		{"etc/passwd", tar.TypeReg, 0o644, ""},
	}
	for _, tt := range tests {
		h, ok := headers[tt.name]
		if !ok {
			t.Errorf("layer has no %s", tt.name)
			continue
		}
		if h.Typeflag != tt.typ || h.Mode != tt.mode || h.Linkname != tt.linkname {
			t.Errorf("layer %s: type %q mode %o link %q, want type %q mode %o link %q",
				tt.name, h.Typeflag, h.Mode, h.Linkname, tt.typ, tt.mode, tt.linkname)
		}
	}
	if got, want := string(layer["etc/passwd"]), "root:x:0:0:root:/root:/bin/sh\n"; got != want {
		t.Errorf("etc/passwd = %q, want %q", got, want)
	}
}

func TestAvailable(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "exe")
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want bool
	}{
		{exe, true},
		{plain, false},
		{dir, false},
		{filepath.Join(dir, "missing"), false},
	}
	for _, tt := range tests {
		if got := Available(tt.path); got != tt.want {
			t.Errorf("Available(%q) = %v, want %v", tt.path, got, tt.want)
		}
	}
}

func TestWriteMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "busybox")
	if err := Write(io.Discard, path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Write(%q) = %v, want an error wrapping os.ErrNotExist", path, err)
	}
}
