package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/pipeline"
)

func validateCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE",
		Short: "Check a pipeline file and report every problem in it",
		Long: `validate parses a pipeline file and reports every problem it finds as
FILE:LINE:COL: FIELD: message, one per line, without running anything.

Besides the format, it checks the limits (` + limitsHelp() + `). weft run, weft trigger and
the dispatcher refuse a pipeline over one the same way, naming it.

` + exitCodesHelp,
		Example: "  weft validate examples/diamond.yml",
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := loadPipeline(args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "%s: ok, pipeline %q with %d stages\n", args[0], p.Name, len(p.Stages))
			return nil
		},
	}
}

// limitsHelp renders the limits of package pipeline for help texts.
func limitsHelp() string {
	return fmt.Sprintf("a file of at most %d KiB; at most %d stages;\nat most %d KiB of commands and %d KiB of environment per stage; at most\n%d MiB with YAML aliases expanded",
		pipeline.MaxFileSize>>10, pipeline.MaxStages, pipeline.MaxCommandsSize>>10, pipeline.MaxEnvSize>>10, pipeline.MaxSize>>20)
}

// loadPipeline parses a pipeline file; problems in it exit with the usage
// code.
func loadPipeline(path string) (*pipeline.Pipeline, error) {
	p, err := pipeline.ParseFile(path)
	if err != nil {
		if errors.Is(err, pipeline.ErrInvalid) {
			return nil, withCode(exitUsage, fmt.Errorf("invalid pipeline:\n%w", err))
		}
		return nil, withCode(exitUsage, err)
	}
	return p, nil
}
