package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

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
			if _, err := objectstore.Name(run, stage, p); err != nil {
				return withCode(exitUsage, err)
			}
			b, err := getFleet.open(cmd.Context(), g, "weft artifacts get")
			if err != nil {
				return err
			}
			defer b.Close()
			store, err := objectstore.Open(cmd.Context(), b.JS, objectstore.Limits{})
			if err != nil {
				return withCode(exitInfra, err)
			}
			r, err := store.Get(cmd.Context(), run, stage, p)
			if errors.Is(err, objectstore.ErrNotFound) {
				return withCode(exitUsage, fmt.Errorf("run %s stage %s: no artifact %s (weft artifacts ls lists them)", run, stage, p))
			}
			if err != nil {
				return withCode(exitInfra, err)
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
	cmd.AddCommand(ls, get)
	return cmd
}

// digestOrInfra is the exit of a failed artifact read: 1 when its digest
// did not match, 3 otherwise.
func digestOrInfra(err error) error {
	if errors.Is(err, objectstore.ErrDigest) {
		return withCode(exitFailed, err)
	}
	return withCode(exitInfra, err)
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
