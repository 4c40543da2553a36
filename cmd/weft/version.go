package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
)

func versionCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "version",
		Short:   "Print weft's version and the versions of its NATS libraries",
		Example: "  weft version",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			version, deps := "(devel)", map[string]string{}
			if bi, ok := debug.ReadBuildInfo(); ok {
				if bi.Main.Version != "" {
					version = bi.Main.Version
				}
				for _, d := range bi.Deps {
					deps[d.Path] = d.Version
				}
			}
			fmt.Fprintf(g.stdout, "weft %s\nnats-server %s\nnats.go %s\n", version,
				deps["github.com/nats-io/nats-server/v2"], deps["github.com/nats-io/nats.go"])
			return nil
		},
	}
}
