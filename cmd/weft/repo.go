package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/repos"
	"github.com/weft-ci/weft/subjects"
)

func repoCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "repo",
		Short: "Manage the repositories weft builds from GitHub deliveries",
		Long: `repo manages repository settings (KV bucket weft_repos): the clone URL,
the webhook secret deliveries are signed with, the pipeline file read from
each commit (default .weft.yml), a token for private repositories and
commit statuses, and per kind of event the queue and priority of its runs:
  default_branch  main, high      (a push to the default branch)
  branch          -, normal       (other pushes)
  tag             release, high   (pushed tags)
  pull_request    pr, normal      (opened, synchronize, reopened)

` + exitCodesHelp,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error { return withCode(exitUsage, cmd.Help()) },
	}
	cmd.AddCommand(repoPutCommand(g, "add"), repoPutCommand(g, "set"), repoLsCommand(g), repoRmCommand(g))
	return cmd
}

// repoPutCommand is weft repo add (a new repository) or set (change one).
func repoPutCommand(g *globals, verb string) *cobra.Command {
	var (
		fleet                                      fleetFlags
		clone, secretFile, pipeline, defaultBranch string
		tokenFile, api                             string
		hookID                                     int64
		wip                                        int
		rules, secrets                             map[string]string
	)
	short := "Add a repository"
	if verb == "set" {
		short = "Change a repository's settings"
	}
	cmd := &cobra.Command{
		Use:   verb + " OWNER/NAME",
		Short: short,
		Long: short + `. The webhook secret and the token are read from files
(--secret-file, --token-file; - for standard input), never from the
command line. --rule KIND=QUEUE:PRIORITY sets a kind's rule (QUEUE or
PRIORITY may be empty to keep the pipeline's). --secret NAME=FILE adds a
variable the stages of trusted runs get: never a fork's pull request.

` + exitCodesHelp,
		Example: "  weft repo add acme/app --clone-url https://github.com/acme/app.git --secret-file hook.secret\n" +
			"  weft repo set acme/app --rule pull_request=pr-fast:high",
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, rs, err := openRepos(cmd.Context(), g, &fleet, "weft repo "+verb)
			if err != nil {
				return err
			}
			defer b.Close()
			r, err := rs.Get(cmd.Context(), args[0])
			switch {
			case verb == "add" && err == nil:
				return withCode(exitUsage, fmt.Errorf("repository %s exists: weft repo set changes it", args[0]))
			case verb == "add" && errors.Is(err, repos.ErrNotFound):
				r = &repos.Repo{Name: args[0]}
			case errors.Is(err, repos.ErrNotFound):
				return withCode(exitUsage, err)
			case err != nil:
				return withCode(exitInfra, err)
			}
			f := cmd.Flags()
			if f.Changed("clone-url") {
				r.CloneURL = clone
			}
			if f.Changed("pipeline") {
				r.Pipeline = pipeline
			}
			if f.Changed("default-branch") {
				r.DefaultBranch = defaultBranch
			}
			if f.Changed("api-base") {
				r.APIBase = api
			}
			if f.Changed("hook-id") {
				r.HookID = hookID
			}
			if f.Changed("wip") {
				r.WIP = wip
			}
			if secretFile != "" {
				if r.Secret, err = readSecret(secretFile); err != nil {
					return withCode(exitUsage, fmt.Errorf("--secret-file: %w", err))
				}
			}
			if tokenFile != "" {
				if r.Token, err = readSecret(tokenFile); err != nil {
					return withCode(exitUsage, fmt.Errorf("--token-file: %w", err))
				}
			}
			for kind, v := range rules {
				queue, prio, _ := strings.Cut(v, ":")
				if r.Rules == nil {
					r.Rules = map[string]repos.Rule{}
				}
				r.Rules[kind] = repos.Rule{Queue: queue, Priority: subjects.Tier(prio)}
			}
			for name, file := range secrets {
				v, err := readSecret(file)
				if err != nil {
					return withCode(exitUsage, fmt.Errorf("--secret %s: %w", name, err))
				}
				if r.Secrets == nil {
					r.Secrets = map[string]string{}
				}
				r.Secrets[name] = v
			}
			if err := rs.Put(cmd.Context(), r); err != nil {
				if errors.Is(err, repos.ErrInvalid) {
					return withCode(exitUsage, err)
				}
				return withCode(exitInfra, err)
			}
			fmt.Fprintf(g.stderr, "weft: repository %s %s\n", r.Name, map[string]string{"add": "added", "set": "changed"}[verb])
			return nil
		},
	}
	fleet.add(cmd)
	f := cmd.Flags()
	f.StringVar(&clone, "clone-url", "", "where agents fetch commits from (https://, ssh://, git://, file://)")
	f.StringVar(&secretFile, "secret-file", "", "file holding the webhook secret (- for stdin)")
	f.StringVar(&pipeline, "pipeline", "", "the pipeline file's path in the repository (default .weft.yml)")
	f.StringVar(&tokenFile, "token-file", "", "file holding a token for private clones and commit statuses (- for stdin)")
	f.StringVar(&defaultBranch, "default-branch", "", "the branch an API trigger naming none builds (default main)")
	f.StringVar(&api, "api-base", "", "GitHub API base URL (default https://api.github.com; GitHub Enterprise: https://HOST/api/v3)")
	f.IntVar(&wip, "wip", 0, "the repository's WIP limit, runs in flight at once (0: the dispatchers' --wip)")
	f.Int64Var(&hookID, "hook-id", 0, "the repository's webhook id on GitHub, to recover deliveries that failed while weft was down")
	f.StringToStringVar(&rules, "rule", nil, "KIND=QUEUE:PRIORITY for default_branch, branch, tag or pull_request (repeatable)")
	f.StringToStringVar(&secrets, "secret", nil, "NAME=FILE: a variable trusted runs' stages get, read from FILE (repeatable)")
	return cmd
}

// openRepos connects to the fleet and opens its repository settings;
// close the bus.
func openRepos(ctx context.Context, g *globals, fleet *fleetFlags, name string) (*bus.Bus, *repos.Store, error) {
	b, err := fleet.open(ctx, g, name)
	if err != nil {
		return nil, nil, err
	}
	rs, err := repos.Open(ctx, b.JS)
	if err != nil {
		b.Close()
		return nil, nil, withCode(exitInfra, err)
	}
	return b, rs, nil
}

// readSecret reads a secret from file (- for stdin), without its final
// newline.
func readSecret(file string) (string, error) {
	var data []byte
	var err error
	if file == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(file)
	}
	if err != nil {
		return "", err
	}
	s := strings.TrimRight(string(data), "\r\n")
	if s == "" {
		return "", errors.New("empty")
	}
	return s, nil
}

func repoLsCommand(g *globals) *cobra.Command {
	var (
		fleet  fleetFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the repositories and their rules (secrets and tokens are never shown)",
		Long:  "ls lists the repositories' settings; secrets and tokens show as set or not.\n\n" + exitCodesHelp,
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, rs, err := openRepos(cmd.Context(), g, &fleet, "weft repo ls")
			if err != nil {
				return err
			}
			defer b.Close()
			list, err := rs.List(cmd.Context())
			if err != nil {
				return withCode(exitInfra, err)
			}
			type shown struct {
				Name     string                `json:"name"`
				CloneURL string                `json:"clone_url"`
				Pipeline string                `json:"pipeline"`
				APIBase  string                `json:"api_base"`
				Token    bool                  `json:"token"`
				Secrets  []string              `json:"secrets,omitempty"`
				Rules    map[string]repos.Rule `json:"rules"`
			}
			var out []shown
			for _, r := range list {
				s := shown{Name: r.Name, CloneURL: r.CloneURL, Pipeline: r.Pipeline, APIBase: r.API(), Token: r.Token != "", Rules: map[string]repos.Rule{}}
				for name := range r.Secrets {
					s.Secrets = append(s.Secrets, name)
				}
				for _, k := range repos.Kinds {
					s.Rules[k] = r.Rule(k)
				}
				out = append(out, s)
			}
			if asJSON {
				return json.NewEncoder(g.stdout).Encode(out)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "REPO\tCLONE URL\tPIPELINE\tTOKEN\tRULES")
			for _, s := range out {
				var rules []string
				for _, k := range repos.Kinds {
					rules = append(rules, fmt.Sprintf("%s=%s:%s", k, s.Rules[k].Queue, s.Rules[k].Priority))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", s.Name, s.CloneURL, s.Pipeline, s.Token, strings.Join(rules, " "))
			}
			return tw.Flush()
		},
	}
	fleet.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func repoRmCommand(g *globals) *cobra.Command {
	var fleet fleetFlags
	cmd := &cobra.Command{
		Use:   "rm OWNER/NAME",
		Short: "Remove a repository: its deliveries are refused from then on (404)",
		Long:  "rm removes a repository's settings.\n\n" + exitCodesHelp,
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, rs, err := openRepos(cmd.Context(), g, &fleet, "weft repo rm")
			if err != nil {
				return err
			}
			defer b.Close()
			if err := rs.Delete(cmd.Context(), args[0]); errors.Is(err, repos.ErrNotFound) {
				return withCode(exitUsage, err)
			} else if err != nil {
				return withCode(exitInfra, err)
			}
			fmt.Fprintf(g.stderr, "weft: repository %s removed\n", args[0])
			return nil
		},
	}
	fleet.add(cmd)
	return cmd
}
