package main

import (
	"cmp"
	"os"
	"os/user"

	"github.com/weft-ci/weft/auth"
)

// cliActor returns who the CLI user is, as the audit stream records it:
// the name in the user JWT of the credentials file creds when it has one
// (weft creds operator --name alice), else $USER@hostname, with the
// operating system's name of the user when $USER is unset.
func cliActor(creds string) string {
	if creds != "" {
		// ReadCreds decodes the file's JWT (jwt.ParseDecoratedJWT,
		// jwt.DecodeUserClaims); Grant.Name is the claims' Name.
		if id, err := auth.ReadCreds(creds); err == nil && id.Grant.Name != "" {
			return id.Grant.Name
		}
	}
	name := os.Getenv("USER")
	if name == "" {
		if u, err := user.Current(); err == nil {
			name = u.Username
		}
	}
	name = cmp.Or(name, "unknown")
	host, err := os.Hostname()
	if err != nil || host == "" {
		return name
	}
	return name + "@" + host
}
