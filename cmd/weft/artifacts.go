package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/client"
	"github.com/weft-ci/weft/internal/bytesize"
	"github.com/weft-ci/weft/objectstore"
	"github.com/weft-ci/weft/runstore"
)

func artifactsCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "artifacts",
		Short: "List and download the artifacts of a run",
		Args:  usageArgs(cobra.NoArgs),
		RunE:  func(cmd *cobra.Command, _ []string) error { return withCode(exitUsage, cmd.Help()) },
	}
	var (
		lsFleet fleetFlags
		asJSON  bool
	)
	ls := &cobra.Command{
		Use:   "ls RUN",
		Short: "List the artifacts of a run",
		Long: `ls lists the artifacts the stages of a run stored (their artifacts: key,
uploaded after the stage succeeded): stage, path, size, SHA-256 digest and
when the bucket's retention removes them.

` + exitCodesHelp,
		Example: "  weft artifacts ls --server nats://ci:4222 01JABCDEF...\n  weft artifacts ls --server nats://ci:4222 --json 01JABCDEF...",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := lsFleet.open(cmd.Context(), g, "weft artifacts ls")
			if err != nil {
				return err
			}
			defer b.Close()
			arts, err := client.Artifacts(cmd.Context(), b.JS, args[0])
			if errors.Is(err, runstore.ErrNoRun) {
				return withCode(exitUsage, fmt.Errorf("run %s: no such run", args[0]))
			}
			if err != nil {
				return withCode(exitInfra, err)
			}
			if asJSON {
				if arts == nil {
					arts = []client.ArtifactInfo{}
				}
				return json.NewEncoder(g.stdout).Encode(arts)
			}
			w := tabwriter.NewWriter(g.stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(w, "STAGE\tPATH\tSIZE\tSHA256\tEXPIRES")
			for _, a := range arts {
				expires := "-"
				if !a.Expires.IsZero() {
					expires = a.Expires.Format(time.RFC3339)
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", a.Stage, a.Path, bytesize.Format(a.Size), a.SHA256, expires)
			}
			return w.Flush()
		},
	}
	lsFleet.add(ls)
	ls.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")

	var (
		getFleet fleetFlags
		out      string
	)
	get := &cobra.Command{
		Use:   "get RUN STAGE PATH",
		Short: "Download an artifact of a run",
		Long: `get streams an artifact of a run's stage to a file (-o, default the
path's base name in the current directory; - is stdout), checking its
SHA-256 digest against the one recorded when it was stored and the one
its run records. A file is
written under a temporary name and renamed once its digest matched; on a
mismatch nothing is left and get exits 1.

` + exitCodesHelp,
		Example: "  weft artifacts get --server nats://ci:4222 01JABCDEF... build bin/app -o app",
		Args:    usageArgs(cobra.ExactArgs(3)),
		RunE: func(cmd *cobra.Command, args []string) error {
			run, stage, p := args[0], args[1], args[2]
			b, store, err := openArtifacts(cmd.Context(), g, &getFleet, "weft artifacts get", run, stage, p)
			if err != nil {
				return err
			}
			defer b.Close()
			r, err := store.Get(cmd.Context(), run, stage, p)
			if err != nil {
				return artifactError(err, run, stage, p)
			}
			defer r.Close()
			// The run's record names the content its stage stored.
			arts, err := client.Artifacts(cmd.Context(), b.JS, run)
			if err != nil && !errors.Is(err, runstore.ErrNoRun) {
				return withCode(exitInfra, err)
			}
			for _, a := range arts {
				if a.Stage == stage && a.Path == r.Artifact.Path && a.SHA256 != r.Artifact.SHA256 {
					return withCode(exitFailed, fmt.Errorf("artifact %s of stage %s: the store holds sha256 %s, the run recorded %s: %w", a.Path, stage, r.Artifact.SHA256, a.SHA256, objectstore.ErrDigest))
				}
			}
			if out == "-" {
				if _, err := io.Copy(g.stdout, r); err != nil {
					return digestOrInfra(err)
				}
				return nil
			}
			if out == "" {
				out = path.Base(r.Artifact.Path)
			}
			tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".part-*")
			if err != nil {
				return withCode(exitInfra, err)
			}
			defer os.Remove(tmp.Name()) // after the rename, nothing
			if _, err := io.Copy(tmp, r); err != nil {
				tmp.Close()
				return digestOrInfra(err)
			}
			if err := tmp.Close(); err != nil {
				return withCode(exitInfra, err)
			}
			if err := os.Rename(tmp.Name(), out); err != nil {
				return withCode(exitInfra, err)
			}
			fmt.Fprintf(g.stderr, "%s: %s, sha256 %s\n", out, bytesize.Format(r.Artifact.Size), r.Artifact.SHA256)
			return nil
		},
	}
	getFleet.add(get)
	get.Flags().StringVarP(&out, "output", "o", "", "file to write (default the artifact's base name; - is stdout)")

	var (
		urlFleet fleetFlags
		base     string
		expires  time.Duration
	)
	sign := &cobra.Command{
		Use:   "url RUN STAGE PATH",
		Short: "Print a signed, time-limited download URL of an artifact",
		Long: `url prints a download URL of an artifact of a run's stage, served by
weft server --http at --base and valid for --expires: anyone holding it can
download the artifact until then, nobody can change what it names. It is
signed with the fleet's key (KV weft_keys, made on first use); weft
artifacts rotate-key replaces the key, and URLs of the key before the
replaced one stop working.

` + exitCodesHelp,
		Example: "  weft artifacts url --server nats://ci:4222 --base http://ci:8080 01JABCDEF... build bin/app --expires 10m",
		Args:    usageArgs(cobra.ExactArgs(3)),
		RunE: func(cmd *cobra.Command, args []string) error {
			run, stage, p := args[0], args[1], args[2]
			if base == "" {
				return withCode(exitUsage, errors.New("--base (or WEFT_HTTP) is required: the address weft server --http serves"))
			}
			if expires <= 0 {
				return withCode(exitUsage, fmt.Errorf("--expires %s: want a positive duration", expires))
			}
			b, store, err := openArtifacts(cmd.Context(), g, &urlFleet, "weft artifacts url", run, stage, p)
			if err != nil {
				return err
			}
			defer b.Close()
			a, err := store.Stat(cmd.Context(), run, stage, p)
			if err != nil {
				return artifactError(err, run, stage, p)
			}
			keys, err := objectstore.OpenKeys(cmd.Context(), b.JS)
			if err != nil {
				return withCode(exitInfra, err)
			}
			key, err := keys.Current(cmd.Context())
			if err != nil {
				return withCode(exitInfra, err)
			}
			u, err := objectstore.SignURL(key, base, a, time.Now().Add(expires))
			if err != nil {
				return withCode(exitUsage, err)
			}
			fmt.Fprintln(g.stdout, u)
			return nil
		},
	}
	urlFleet.add(sign)
	sign.Flags().StringVar(&base, "base", os.Getenv("WEFT_HTTP"), "address of weft server --http, e.g. http://ci:8080 (env WEFT_HTTP)")
	sign.Flags().DurationVar(&expires, "expires", 10*time.Minute, "how long the URL is valid")

	var rotFleet fleetFlags
	rotate := &cobra.Command{
		Use:   "rotate-key",
		Short: "Replace the key that signs artifact URLs",
		Long: `rotate-key makes a new signing key for artifact URLs. URLs signed with the
key it replaces keep working until the next rotation; older ones get 403.

` + exitCodesHelp,
		Example: "  weft artifacts rotate-key --server nats://ci:4222",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := rotFleet.open(cmd.Context(), g, "weft artifacts rotate-key")
			if err != nil {
				return err
			}
			defer b.Close()
			keys, err := objectstore.OpenKeys(cmd.Context(), b.JS)
			if err != nil {
				return withCode(exitInfra, err)
			}
			key, err := keys.Rotate(cmd.Context())
			if err != nil {
				return withCode(exitInfra, err)
			}
			fmt.Fprintf(g.stdout, "weft: artifact URLs are signed with key %s\n", key.ID)
			return nil
		},
	}
	rotFleet.add(rotate)
	cmd.AddCommand(ls, get, sign, rotate)
	return cmd
}

// serveArtifacts serves signed artifact downloads on addr until ctx ends
// or stop is called, which waits for the server to shut down.
func serveArtifacts(ctx context.Context, g *globals, b *bus.Bus, addr string, keep time.Duration) (stop func(), err error) {
	store, err := objectstore.Open(ctx, b.JS, objectstore.Limits{})
	if err != nil {
		return nil, withCode(exitInfra, err)
	}
	keys, err := objectstore.OpenKeys(ctx, b.JS)
	if err != nil {
		return nil, withCode(exitInfra, err)
	}
	if keep, err = bus.Retention(ctx, b.JS, keep); err != nil {
		return nil, withCode(exitInfra, err)
	}
	ln, err := listenHTTP(addr, "--http")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle(objectstore.URLPrefix, objectstore.Handler(store, keys, keep, time.Now))
	fmt.Fprintf(g.stderr, "weft: artifact downloads on http://%s%s\n", ln.Addr(), objectstore.URLPrefix)
	return serveHTTP(ctx, g, ln, "artifact downloads", mux), nil
}

// openArtifacts checks an artifact's name (exit 2) and connects to the
// fleet's artifact store; close the bus.
func openArtifacts(ctx context.Context, g *globals, fleet *fleetFlags, name, run, stage, p string) (*bus.Bus, *objectstore.Store, error) {
	if _, err := objectstore.Name(run, stage, p); err != nil {
		return nil, nil, withCode(exitUsage, err)
	}
	b, err := fleet.open(ctx, g, name)
	if err != nil {
		return nil, nil, err
	}
	store, err := objectstore.Open(ctx, b.JS, objectstore.Limits{})
	if err != nil {
		b.Close()
		return nil, nil, withCode(exitInfra, err)
	}
	return b, store, nil
}

// artifactError is the exit of a failed read of an artifact: 2 naming it
// when the store does not hold it, 3 otherwise.
func artifactError(err error, run, stage, p string) error {
	if errors.Is(err, objectstore.ErrNotFound) {
		return withCode(exitUsage, fmt.Errorf("run %s stage %s: no artifact %s (weft artifacts ls lists them)", run, stage, p))
	}
	return withCode(exitInfra, err)
}

// digestOrInfra is the exit of a failed artifact read: 1 when its digest
// did not match, 3 otherwise.
func digestOrInfra(err error) error {
	if errors.Is(err, objectstore.ErrDigest) {
		return withCode(exitFailed, err)
	}
	return withCode(exitInfra, err)
}

// storageFlags adds the flags of an agent's artifact and cache limits.
func storageFlags(f *pflag.FlagSet, arts *objectstore.Limits, cache *objectstore.CacheLimits) {
	f.Var(sizeValue{&arts.File}, "artifact-max-file", "largest artifact file a stage may store, e.g. 500MiB (default "+bytesize.Format(objectstore.DefaultMaxFile)+")")
	f.Var(sizeValue{&arts.Run}, "artifact-max-run", "most a run's artifacts may take together (default "+bytesize.Format(objectstore.DefaultMaxRun)+")")
	f.Var(sizeValue{&cache.Quota}, "cache-quota", "most the stage caches of one repository may take; the least recently used go first (default "+bytesize.Format(objectstore.DefaultCacheQuota)+")")
	f.DurationVar(&cache.MaxUnused, "cache-max-unused", objectstore.DefaultCacheMaxUnused, "a cache entry not restored for this long goes at the next save of its repository")
}

// sizeValue is a flag holding a size in bytes, read by bytesize.Parse.
type sizeValue struct{ p *int64 }

func (v sizeValue) String() string {
	if v.p == nil || *v.p == 0 {
		return ""
	}
	return bytesize.Format(*v.p)
}

func (v sizeValue) Set(s string) error {
	n, err := bytesize.Parse(s)
	if err != nil {
		return err
	}
	*v.p = n
	return nil
}

func (v sizeValue) Type() string { return "size" }
