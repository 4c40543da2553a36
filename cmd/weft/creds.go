package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/weft-ci/weft/agent"
	"github.com/weft-ci/weft/auth"
)

const authHelp = `Auth: a server that listens beyond loopback (--listen, --leaf-listen on
an address other than 127.0.0.1, ::1 or localhost) has authentication on
unless --auth off: NATS runs in operator mode with the keys in
--auth-dir (default STATE/auth, made on the first start; give every
member of a cluster a copy of the same directory), and only clients with
credentials those keys signed get in, each with its role's permissions.
weft creds ROLE mints them, on the machine that has the directory:
  dispatcher  everything (dispatchers create the job consumers)
  agent       its own queues' jobs only (--queue, --label), its events,
              logs and registry entry, stage documents, artifacts
  trigger     publish triggers and follow their runs (webhook bridge,
              weft trigger, weft run --server)
  operator    everything (status, pause, dead letters, cancel, nats CLI)
  viewer      read-only
Every client takes --creds FILE (env WEFT_CREDS). With auth on, the
monitoring endpoints know weft's streams by the account's public key
(/jsz?acc=KEY), which the server prints.

`

func credsCommand(g *globals) *cobra.Command {
	var (
		state, dir, name, domain, out string
		queues                        []string
		labels                        map[string]string
		expires                       time.Duration
		account, initKeys             bool
	)
	cmd := &cobra.Command{
		Use:   "creds ROLE | --account",
		Short: "Mint the NATS credentials of a weft user (dispatcher, agent, trigger, operator, viewer)",
		Long: `creds mints a NATS credentials file (a user JWT and its nkey seed) for a
user of a weft server with auth on, signed with the keys in --auth-dir.
The permissions are in the credentials: the server needs no change. An
agent's credentials also carry its queues and labels, so
weft agent --join URL --creds FILE needs nothing else. Anyone holding
the file has the role: keep it like a password.

--account prints the weft account's public key instead (what /jsz?acc=
and KEDA's scaler name weft's streams by). --init makes the keys where
there are none yet, for a deployment that hands the same directory to
every server (a cluster's members) before the first start.

` + authHelp + exitCodesHelp,
		Example: "  weft creds agent --queue main --queue pr --label os=linux -o agent.creds\n" +
			"  weft creds operator --name alice -o alice.creds\n" +
			"  weft creds --init --auth-dir ./weft-auth --account",
		Args: usageArgs(func(cmd *cobra.Command, args []string) error {
			if account {
				return cobra.NoArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		}),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				dir = filepath.Join(state, "auth")
			}
			open := auth.Load
			if initKeys {
				open = auth.Init
			}
			a, err := open(dir)
			if err != nil {
				return withCode(exitUsage, err)
			}
			if account {
				_, err := fmt.Fprintln(g.stdout, a.Account())
				return err
			}
			role, err := auth.ParseRole(args[0])
			if err != nil {
				return withCode(exitUsage, err)
			}
			if expires < 0 {
				return withCode(exitUsage, fmt.Errorf("--expires %s: want 0 (never) or more", expires))
			}
			grant := auth.Grant{Role: role, Name: name, Queues: queues, Labels: labels, JSDomain: domain}
			creds, err := a.Mint(grant, expires)
			if err != nil {
				return withCode(exitUsage, err)
			}
			data, err := creds.File()
			if err != nil {
				return withCode(exitInfra, err)
			}
			if out == "" || out == "-" {
				_, err := g.stdout.Write(data)
				return err
			}
			// O_EXCL: a mistyped -o never overwrites someone's credentials.
			f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return withCode(exitUsage, fmt.Errorf("-o: %w", err))
			}
			_, werr := f.Write(data)
			if cerr := f.Close(); werr == nil {
				werr = cerr
			}
			if werr != nil {
				return withCode(exitInfra, werr)
			}
			what := string(role)
			if len(queues) > 0 {
				what += " of queues " + strings.Join(queues, ", ")
			}
			fmt.Fprintf(g.stderr, "weft: %s credentials written to %s\n", what, out)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", envOr("WEFT_STATE", "weft-state"), "the server's state directory, whose auth/ holds the keys (env WEFT_STATE)")
	f.StringVar(&dir, "auth-dir", os.Getenv("WEFT_AUTH_DIR"), "directory of the server's keys (default STATE/auth; env WEFT_AUTH_DIR)")
	f.StringVar(&name, "name", "", "the user's name, shown in the server's connection list (default the role)")
	f.StringSliceVar(&queues, "queue", nil, "an agent's queue (repeatable; required for agent)")
	f.StringToStringVar(&labels, "label", nil, "an agent's label, K=V (repeatable, at most 4)")
	f.StringVar(&domain, "js-domain", "", "JetStream domain of weft's streams, for a user of an edge leaf node")
	f.DurationVar(&expires, "expires", 0, "how long the credentials are valid; 0 is until the keys change")
	f.BoolVar(&account, "account", false, "print the weft account's public key, and mint nothing")
	f.BoolVar(&initKeys, "init", false, "make the keys in the directory if it has none")
	f.StringVarP(&out, "output", "o", "", "file to write (mode 0600, never overwritten); default stdout")
	return cmd
}

// authOn decides whether a server has auth on: mode is on, off or auto
// (on when any of the addresses it listens on is beyond loopback).
func authOn(mode string, addrs ...string) (bool, error) {
	switch mode {
	case "on":
		return true, nil
	case "off":
		return false, nil
	case "auto":
	default:
		return false, fmt.Errorf("--auth %q: want auto, on or off", mode)
	}
	for _, addr := range addrs {
		if addr == "" {
			continue
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return false, fmt.Errorf("listen address %q: %w", addr, err)
		}
		if host == "localhost" {
			continue
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return true, nil
		}
	}
	return false, nil
}

// agentFromCreds configures an agent from its credentials: an agent's
// queues, labels and JetStream domain unless the flags name their own,
// which must be among the credentials'. An agent's credentials may not
// create consumers: it asks a dispatcher to.
func agentFromCreds(cmd *cobra.Command, path string, cfg *agent.Config, jsDomain *string) error {
	id, err := auth.ReadCreds(path)
	if err != nil {
		return err
	}
	if id.Grant.Role != auth.Agent {
		return nil
	}
	cfg.OpenByDispatcher = true
	flags := cmd.Flags()
	if !flags.Changed("queue") {
		cfg.Queues = id.Grant.Queues
	}
	for _, q := range cfg.Queues {
		if !slices.Contains(id.Grant.Queues, q) {
			return fmt.Errorf("--queue %s: the credentials in %s are for queues %s only", q, path, strings.Join(id.Grant.Queues, ", "))
		}
	}
	if !flags.Changed("label") {
		cfg.Labels = id.Grant.Labels
	}
	for k, v := range cfg.Labels {
		if id.Grant.Labels[k] != v {
			return fmt.Errorf("--label %s=%s: the credentials in %s do not carry it", k, v, path)
		}
	}
	if *jsDomain == "" {
		*jsDomain = id.Grant.JSDomain
	}
	return nil
}
