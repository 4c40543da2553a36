package main

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/pipeline"
)

func validateCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "validate FILE",
		Short: "Check a pipeline file and report every problem in it",
		Long: `validate parses a pipeline file and reports every problem it finds as
FILE:LINE:COL: FIELD: message, one per line, without running anything.

Besides the format, it checks the pipeline's size: with YAML aliases
expanded, and counting the state a run keeps of each stage, a pipeline
must stay within ` + sizeLimit() + `, so that its run fits in NATS messages. weft run,
weft trigger and the dispatcher refuse a larger one the same way.

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

// sizeLimit renders pipeline.MaxSize for help texts.
func sizeLimit() string { return strconv.Itoa(pipeline.MaxSize>>10) + " KiB" }

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
