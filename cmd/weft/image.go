package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/container"
)

// defaultContainerd is containerd's default socket.
const defaultContainerd = "/run/containerd/containerd.sock"

func imageCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Manage the images stages run in",
		Args:  usageArgs(cobra.NoArgs),
		RunE:  func(cmd *cobra.Command, _ []string) error { return withCode(exitUsage, cmd.Help()) },
	}
	var address, name string
	imp := &cobra.Command{
		Use:   "import FILE",
		Short: "Import an OCI or Docker image archive into containerd for weft's stages",
		Long: `import loads an image archive (an OCI image layout or a docker save tar)
into containerd's store in weft's namespace and unpacks it, so stages can
use it with no registry. It prints the names of the imported images.

` + exitCodesHelp,
		Example: `  weft image import busybox.tar
  weft image import --name registry.example.com/team/builder:1 builder.tar`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return withCode(exitUsage, err)
			}
			defer f.Close()
			rt, err := container.Connect(cmd.Context(), container.Config{Address: address})
			if err != nil {
				return withCode(exitInfra, err)
			}
			defer rt.Close()
			names, err := rt.Import(cmd.Context(), f, name)
			if err != nil {
				return withCode(exitUsage, fmt.Errorf("%s: %w", args[0], err))
			}
			for _, n := range names {
				fmt.Fprintln(g.stdout, n)
			}
			return nil
		},
	}
	imp.Flags().StringVar(&address, "containerd-address", envOr("WEFT_CONTAINERD_ADDRESS", defaultContainerd), "containerd socket (env WEFT_CONTAINERD_ADDRESS)")
	imp.Flags().StringVar(&name, "name", "", "name the archive's image (for archives whose images carry no full reference)")
	cmd.AddCommand(imp)
	return cmd
}
