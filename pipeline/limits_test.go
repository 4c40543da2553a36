package pipeline

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// aliased returns a pipeline of n stages that all run one list of cmds
// commands, written once and aliased.
func aliased(n, cmds int) string {
	var b strings.Builder
	b.WriteString("name: big\nstages:\n  - key: s0\n    commands: &cmds\n")
	for i := range cmds {
		fmt.Fprintf(&b, "      - echo step %d of the shared command list\n", i)
	}
	for i := 1; i < n; i++ {
		fmt.Fprintf(&b, "  - key: s%d\n    commands: *cmds\n", i)
	}
	return b.String()
}

func TestParseSizeLimit(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // substrings of the only error; nil for none
	}{
		{"small", aliased(10, 50), nil},
		{"a thousand one-command stages", aliased(1000, 1), nil},
		{"ten thousand stages, the most a pipeline may have", aliased(MaxStages, 1), nil},
		{
			"one stage too many", aliased(MaxStages+1, 1),
			[]string{"p.yml:2:1: stages: 10001 stages, over the limit of 10000 stages per pipeline"},
		},
		{
			"3000 stages sharing a 100-command alias", aliased(3000, 100),
			[]string{"p.yml:2:1: stages: the expanded pipeline is 12.", "(3000 stages; YAML aliases are expanded), over the limit of 8 MiB"},
		},
		{
			"one long string aliased ten thousand times",
			"name: x\nstages:\n  - key: a\n    commands: [&s " + strings.Repeat("x", 400_000) + "]\n  - key: b\n    commands: [" + strings.Repeat("*s, ", 10_000) + "*s]\n",
			[]string{"p.yml:2:1: stages: the expanded pipeline holds more than 32 MiB of YAML values (2 stages; YAML aliases are expanded), over the limit of 8 MiB"},
		},
		{
			"a stage's commands over the limit",
			"name: x\nstages:\n  - key: a\n    commands: [&s " + strings.Repeat("x", 40_000) + "]\n  - key: b\n    commands: [*s, *s]\n",
			[]string{"p.yml:5:5: stages[1].commands: the commands are 78.2 KiB (YAML aliases are expanded), over the limit of 64 KiB per stage"},
		},
		{
			"a stage's environment over the limit",
			"name: x\nenv: {A: &v " + strings.Repeat("v", 40_000) + "}\nstages:\n  - key: a\n    commands: [true]\n  - key: b\n    commands: [true]\n    env: {B: *v}\n",
			[]string{"p.yml:6:5: stages[1].env: the environment is 78.2 KiB (the pipeline's env with the stage's own; YAML aliases are expanded), over the limit of 64 KiB per stage"},
		},
		{
			"a file over the limit",
			"name: x\n# " + strings.Repeat("x", MaxFileSize) + "\nstages: [{key: a, commands: [true]}]\n",
			[]string{"p.yml:1:1: (file): the file is 512.1 KiB, over the limit of 512 KiB"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			p, err := Parse("p.yml", []byte(tt.src))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Parse = %v, want no error", err)
				}
				if n, _ := expandedSize(p); n > MaxSize {
					t.Errorf("expandedSize = %d, over MaxSize %d for an accepted pipeline", n, MaxSize)
				}
				return
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) != 1 || !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse = %v, want one error matching ErrInvalid", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(errs[0].Error(), w) {
					t.Errorf("Parse = %q, want it to contain %q", errs[0].Error(), w)
				}
			}
			// Not a benchmark: a hostile file must not make Parse encode
			// gigabytes, which takes minutes and all the memory.
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("Parse took %v", d)
			}
		})
	}
}

func TestParseSizeLimitIsReportedWithTheOtherProblems(t *testing.T) {
	src := strings.Replace(aliased(3000, 100), "name: big\n", "name: big\nqueu: x\n", 1)
	_, err := Parse("p.yml", []byte(src))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 2 || errs[0].Field != "queu" || errs[1].Field != "stages" || !strings.Contains(errs[1].Msg, "over the limit of 8 MiB") {
		t.Fatalf("Parse = %v, want the unknown field and the size limit", err)
	}
}
