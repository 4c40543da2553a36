package auth

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
)

// Identity is what a user's credentials say of it: the grant weft minted
// them with (read from the JWT's tags) and its public key.
type Identity struct {
	// User is the user's public key.
	User string
	// Grant is the grant the credentials were minted with; a role of ""
	// for credentials weft did not mint.
	Grant Grant
	// Expires is when the credentials expire; zero for never.
	Expires time.Time
}

// InboxPrefix returns the inbox prefix the user's permissions allow
// (InboxPrefix of its key), for nats.CustomInboxPrefix.
func (id Identity) InboxPrefix() string { return InboxPrefix(id.User) }

// ReadCreds reads the identity in a .creds file.
func ReadCreds(path string) (Identity, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Identity{}, fmt.Errorf("credentials: %w", err)
	}
	token, err := jwt.ParseDecoratedJWT(data)
	if err != nil {
		return Identity{}, fmt.Errorf("credentials %s: %w", path, err)
	}
	uc, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return Identity{}, fmt.Errorf("credentials %s: not a NATS user's: %w", path, err)
	}
	id := Identity{User: uc.Subject}
	if uc.Expires > 0 {
		id.Expires = time.Unix(uc.Expires, 0)
	}
	for _, t := range uc.Tags {
		switch {
		case strings.HasPrefix(t, tagRole):
			id.Grant.Role = Role(strings.TrimPrefix(t, tagRole))
		case strings.HasPrefix(t, tagQueue):
			id.Grant.Queues = append(id.Grant.Queues, strings.TrimPrefix(t, tagQueue))
		case strings.HasPrefix(t, tagLabel):
			k, v, _ := strings.Cut(strings.TrimPrefix(t, tagLabel), "=")
			if id.Grant.Labels == nil {
				id.Grant.Labels = map[string]string{}
			}
			id.Grant.Labels[k] = v
		case strings.HasPrefix(t, tagDomain):
			id.Grant.JSDomain = strings.TrimPrefix(t, tagDomain)
		}
	}
	id.Grant.Name = uc.Name
	return id, nil
}
