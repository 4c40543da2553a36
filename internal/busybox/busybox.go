// Package busybox builds a one-layer OCI image of Debian's static busybox
// (/bin/busybox from the busybox-static package), so that the tests and
// weft bench chaos can load it into containerd with client.Import and run
// containers without a registry or network.
//
// Write produces an OCI image layout as a tar stream: oci-layout, index.json
// and blobs/sha256/<hex> for the layer, the config and the manifest. The
// output is byte-for-byte reproducible for a given busybox binary and Go
// toolchain: every timestamp is the Unix epoch, owners are root, and entries
// are written in sorted order.
//
// It must not import anything of weft's, NATS or containerd client code. The
// OCI JSON documents are written with small local structs holding only the
// fields containerd reads, which keeps the helper free of dependencies.
package busybox

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// Ref is the reference the archive's image is named by.
const Ref = "docker.io/weft/busybox:test"

// OCI media types and annotation keys used in the archive.
const (
	mediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	mediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	mediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar+gzip"

	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"

	// refName is the tag part of Ref, stored as the OCI ref name.
	refName = "test"

	// layoutFile is the content of the oci-layout file.
	layoutFile = `{"imageLayoutVersion":"1.0.0"}`
)

// epoch is the time stamped on every tar entry and on the image config.
var epoch = time.Unix(0, 0).UTC()

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

// platform is the OCI platform of an image.
type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// index is the OCI image index stored as index.json.
type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

// manifest is the OCI image manifest.
type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

// imageConfig is the OCI image configuration.
type imageConfig struct {
	Created      time.Time     `json:"created"`
	Architecture string        `json:"architecture"`
	OS           string        `json:"os"`
	Config       runtimeConfig `json:"config"`
	RootFS       rootFS        `json:"rootfs"`
}

// runtimeConfig is the execution part of an OCI image configuration.
type runtimeConfig struct {
	Env        []string `json:"Env"`
	Cmd        []string `json:"Cmd"`
	WorkingDir string   `json:"WorkingDir"`
}

// rootFS lists the uncompressed digests of an image's layers.
type rootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

// blob is a piece of content stored under blobs/sha256.
type blob struct {
	desc descriptor
	data []byte
}

// newBlob returns data as a blob of the given media type.
func newBlob(mediaType string, data []byte) blob {
	sum := sha256.Sum256(data)
	return blob{desc: descriptor{MediaType: mediaType, Digest: digest(sum[:]), Size: int64(len(data))}, data: data}
}

// digest formats a sha256 sum as an OCI digest.
func digest(sum []byte) string {
	return "sha256:" + hex.EncodeToString(sum)
}

// Write writes the image archive to w, built from the busybox binary at path
// (usually "/bin/busybox").
//
// The layer holds bin/busybox (mode 0755) and a symlink bin/<applet> ->
// busybox for every applet that `<path> --list` prints; the empty
// directories tmp (1777), root (0700), workspace, etc, proc, sys and dev
// (0755); and etc/passwd and etc/group with a root user and group. The image
// runs /bin/sh in / with PATH=/bin, for runtime.GOARCH on linux, and is named
// Ref. Write runs path as a child process and waits for it.
func Write(w io.Writer, path string) error {
	bin, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("busybox: read %s: %w", path, err)
	}
	applets, err := listApplets(path)
	if err != nil {
		return err
	}
	layerData, diffID, err := buildLayer(bin, applets)
	if err != nil {
		return err
	}
	layer := newBlob(mediaTypeLayer, layerData)

	cfgData, err := json.Marshal(imageConfig{
		Created:      epoch,
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Config: runtimeConfig{
			Env:        []string{"PATH=/bin"},
			Cmd:        []string{"/bin/sh"},
			WorkingDir: "/",
		},
		RootFS: rootFS{Type: "layers", DiffIDs: []string{diffID}},
	})
	if err != nil {
		return fmt.Errorf("busybox: encode config: %w", err)
	}
	cfg := newBlob(mediaTypeConfig, cfgData)

	mfData, err := json.Marshal(manifest{
		SchemaVersion: 2,
		MediaType:     mediaTypeManifest,
		Config:        cfg.desc,
		Layers:        []descriptor{layer.desc},
	})
	if err != nil {
		return fmt.Errorf("busybox: encode manifest: %w", err)
	}
	mf := newBlob(mediaTypeManifest, mfData)

	mfDesc := mf.desc
	mfDesc.Annotations = map[string]string{
		annotationContainerdName: Ref,
		annotationRefName:        refName,
	}
	mfDesc.Platform = &platform{Architecture: runtime.GOARCH, OS: "linux"}
	idxData, err := json.Marshal(index{
		SchemaVersion: 2,
		MediaType:     mediaTypeIndex,
		Manifests:     []descriptor{mfDesc},
	})
	if err != nil {
		return fmt.Errorf("busybox: encode index: %w", err)
	}

	tw := tar.NewWriter(w)
	files := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(layoutFile)},
		{"index.json", idxData},
		{blobPath(layer), layer.data},
		{blobPath(cfg), cfg.data},
		{blobPath(mf), mf.data},
	}
	for _, f := range files {
		if err := writeFile(tw, f.name, 0o644, f.data); err != nil {
			return fmt.Errorf("busybox: write archive %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("busybox: write archive: %w", err)
	}
	return nil
}

// blobPath is where b is stored in the image layout.
func blobPath(b blob) string {
	return "blobs/sha256/" + strings.TrimPrefix(b.desc.Digest, "sha256:")
}

// Available reports whether a static busybox is at path: a regular file with
// an execute bit set. It does not check how the binary is linked.
func Available(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// listApplets runs `path --list` and returns the applet names it prints,
// sorted and without duplicates or busybox itself.
func listApplets(path string) ([]string, error) {
	out, err := exec.Command(path, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox: %s --list: %w", path, err)
	}
	var applets []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		switch {
		case name == "" || name == "busybox":
			continue
		case name == "." || name == ".." || strings.ContainsAny(name, "/\x00"):
			return nil, fmt.Errorf("busybox: %s --list: bad applet name %q", path, name)
		}
		applets = append(applets, name)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("busybox: %s --list: %w", path, err)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("busybox: %s --list: no applets", path)
	}
	slices.Sort(applets)
	return slices.Compact(applets), nil
}

// buildLayer returns the gzipped layer tar and the digest of the
// uncompressed tar (its diff ID).
func buildLayer(bin []byte, applets []string) ([]byte, string, error) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf) // the header's ModTime stays zero and Name empty
	diff := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(gz, diff))
	if err := writeLayer(tw, bin, applets); err != nil {
		return nil, "", fmt.Errorf("busybox: write layer: %w", err)
	}
	if err := tw.Close(); err != nil {
		return nil, "", fmt.Errorf("busybox: write layer: %w", err)
	}
	if err := gz.Close(); err != nil {
		return nil, "", fmt.Errorf("busybox: compress layer: %w", err)
	}
	return buf.Bytes(), digest(diff.Sum(nil)), nil
}

// writeLayer writes the layer's entries to tw, parents before children.
func writeLayer(tw *tar.Writer, bin []byte, applets []string) error {
	dirs := []struct {
		name string
		mode int64
	}{
		{"bin/", 0o755},
		{"dev/", 0o755},
		{"etc/", 0o755},
		{"proc/", 0o755},
		{"root/", 0o700},
		{"sys/", 0o755},
		{"tmp/", 0o1777},
		{"workspace/", 0o755},
	}
	for _, d := range dirs {
		if err := tw.WriteHeader(header(d.name, tar.TypeDir, d.mode, 0)); err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
	}
	if err := writeFile(tw, "bin/busybox", 0o755, bin); err != nil {
		return fmt.Errorf("bin/busybox: %w", err)
	}
	for _, a := range applets {
		h := header("bin/"+a, tar.TypeSymlink, 0o777, 0)
		h.Linkname = "busybox"
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("bin/%s: %w", a, err)
		}
	}
	if err := writeFile(tw, "etc/group", 0o644, []byte("root:x:0:\n")); err != nil {
		return fmt.Errorf("etc/group: %w", err)
	}
	if err := writeFile(tw, "etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n")); err != nil {
		return fmt.Errorf("etc/passwd: %w", err)
	}
	return nil
}

// writeFile writes a regular file entry with its content to tw.
func writeFile(tw *tar.Writer, name string, mode int64, data []byte) error {
	if err := tw.WriteHeader(header(name, tar.TypeReg, mode, int64(len(data)))); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// header returns a reproducible tar header owned by root at the epoch.
func header(name string, typ byte, mode, size int64) *tar.Header {
	return &tar.Header{
		Typeflag: typ,
		Name:     name,
		Mode:     mode,
		Size:     size,
		ModTime:  epoch,
		Uname:    "root",
		Gname:    "root",
		Format:   tar.FormatUSTAR,
	}
}
