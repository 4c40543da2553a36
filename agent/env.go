package agent

import (
	"fmt"
	"slices"
	"strings"
)

// DefaultEnvAllow returns the variables of the agent's environment a
// host stage gets without asking (NAME* allows a prefix): what a shell
// and common tools need to work, and the proxy settings a build needs to
// reach out. Config.EnvAllow adds to them.
func DefaultEnvAllow() []string {
	return []string{
		"PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TZ", "TMPDIR",
		"LANG", "LANGUAGE", "LC_*",
		"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
	}
}

// weftEnvPrefix starts weft's own variables (WEFT_SERVER, WEFT_CREDS,
// ...), which never pass from the agent's environment to a stage's: the
// job sets the WEFT_ variables a stage has.
const weftEnvPrefix = "WEFT_"

// checkEnvAllow refuses an allow-list entry that is empty, malformed or
// names weft's own variables.
func checkEnvAllow(allow []string) error {
	for _, a := range allow {
		name := strings.TrimSuffix(a, "*")
		switch {
		case name == "" || strings.ContainsAny(name, "=*"):
			return fmt.Errorf("%w: env allow %q: want NAME or PREFIX*", ErrInvalidConfig, a)
		case strings.HasPrefix(name, weftEnvPrefix) || strings.HasPrefix(weftEnvPrefix, name):
			return fmt.Errorf("%w: env allow %q: weft's own variables (%s*) never pass to a stage", ErrInvalidConfig, a, weftEnvPrefix)
		}
	}
	return nil
}

// hostEnv returns the variables of env (KEY=VALUE) that allow names,
// in their order, and none of weft's own.
func hostEnv(env, allow []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, weftEnvPrefix) {
			continue
		}
		if slices.ContainsFunc(allow, func(a string) bool {
			if p, ok := strings.CutSuffix(a, "*"); ok {
				return strings.HasPrefix(k, p)
			}
			return k == a
		}) {
			out = append(out, kv)
		}
	}
	return out
}
