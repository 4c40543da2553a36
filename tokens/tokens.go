// Package tokens keeps the HTTP API's bearer tokens in a JetStream KV
// bucket (subjects.TokensBucket), one key per token: the SHA-256 of the
// secret, never the secret itself. A token has a name, a role and the
// time it was made.
//
// Decisions taken where the design was silent:
//
//   - A secret is "weft_" and 32 random bytes in base32: it cannot be
//     guessed, so one unsalted SHA-256 is enough to store it (a password
//     hash slows guessing of low-entropy secrets; these have none to slow).
//   - The key is the hash's hex: Verify is one KV get, and a deleted
//     token is gone at once for every API server.
//   - Roles are ordered, viewer < operator < admin: a call needing
//     operator accepts admin. Admin alone makes and revokes tokens.
package tokens

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"github.com/weft-ci/weft/subjects"
)

// Role is what a token may do.
type Role string

// Roles, from least to most.
const (
	// Viewer reads: runs, logs, artifacts, queues, agents.
	Viewer Role = "viewer"
	// Operator also triggers, cancels and retries runs, and steers
	// queues, the intake and agents.
	Operator Role = "operator"
	// Admin also makes and revokes tokens.
	Admin Role = "admin"
)

// Roles lists the roles from least to most.
var Roles = []Role{Viewer, Operator, Admin}

// Allows reports whether r may do what need calls for.
func (r Role) Allows(need Role) bool {
	return slices.Index(Roles, r) >= slices.Index(Roles, need) && slices.Contains(Roles, need)
}

// ParseRole returns the role named s; the error names the roles.
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !slices.Contains(Roles, r) {
		return "", fmt.Errorf("%w: role %q: want viewer, operator or admin", ErrInvalid, s)
	}
	return r, nil
}

// Errors.
var (
	// ErrInvalid is wrapped by the errors of a bad name or role.
	ErrInvalid = errors.New("tokens: invalid")
	// ErrUnknown is wrapped by Verify's error for a secret that is no
	// token (malformed, never made, or revoked).
	ErrUnknown = errors.New("tokens: unknown token")
	// ErrNotFound is wrapped by Revoke's error for an id no token has.
	ErrNotFound = errors.New("tokens: no such token")
)

// Prefix begins every secret, so that one is recognised in a file or a
// log line.
const Prefix = "weft_"

// Token is one token's record: what it is, not its secret.
type Token struct {
	// ID is a ULID naming the token, for weft token ls and revoke.
	ID string `json:"id"`
	// Name says whose or what for.
	Name string `json:"name"`
	// Role is what it may do.
	Role Role `json:"role"`
	// Created is when it was made.
	Created time.Time `json:"created"`
	// Hash is the hex SHA-256 of the secret (its key in the bucket).
	Hash string `json:"hash"`
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.@ -]{0,63}$`)

// Store reads and writes tokens.
type Store struct{ kv jetstream.KeyValue }

// Open returns the store on the provisioned bucket.
func Open(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, subjects.TokensBucket)
	if err != nil {
		return nil, fmt.Errorf("tokens: bucket %s: %w", subjects.TokensBucket, err)
	}
	return &Store{kv: kv}, nil
}

// Create makes a token and returns its secret, shown this once, and its
// record.
func (s *Store) Create(ctx context.Context, name string, role Role) (string, *Token, error) {
	if !nameRE.MatchString(name) {
		return "", nil, fmt.Errorf("%w: name %q: want 1-64 letters, digits, space, _ . @ -", ErrInvalid, name)
	}
	if _, err := ParseRole(string(role)); err != nil {
		return "", nil, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", nil, fmt.Errorf("tokens: random: %w", err)
	}
	secret := Prefix + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(raw))
	t := &Token{ID: ulid.Make().String(), Name: name, Role: role, Created: time.Now().UTC(), Hash: Hash(secret)}
	data, err := json.Marshal(t)
	if err != nil {
		return "", nil, fmt.Errorf("tokens: encode: %w", err)
	}
	if _, err := s.kv.Create(ctx, t.Hash, data); err != nil {
		return "", nil, fmt.Errorf("tokens: store %s: %w", name, err)
	}
	return secret, t, nil
}

// Hash returns the hex SHA-256 of a secret: its key.
func Hash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

// Verify returns the token whose secret this is; the error wraps
// ErrUnknown when there is none.
func (s *Store) Verify(ctx context.Context, secret string) (*Token, error) {
	if !strings.HasPrefix(secret, Prefix) || len(secret) > 128 {
		return nil, fmt.Errorf("%w: not a weft token", ErrUnknown)
	}
	e, err := s.kv.Get(ctx, Hash(secret))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: revoked or never made", ErrUnknown)
	}
	if err != nil {
		return nil, fmt.Errorf("tokens: verify: %w", err)
	}
	var t Token
	if err := json.Unmarshal(e.Value(), &t); err != nil {
		return nil, fmt.Errorf("tokens: decode: %w", err)
	}
	return &t, nil
}

// List returns every token's record, oldest first.
func (s *Store) List(ctx context.Context) ([]*Token, error) {
	keys, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("tokens: list: %w", err)
	}
	var out []*Token
	for k := range keys.Keys() {
		e, err := s.kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("tokens: get: %w", err)
		}
		var t Token
		if json.Unmarshal(e.Value(), &t) == nil {
			out = append(out, &t)
		}
	}
	slices.SortFunc(out, func(a, b *Token) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// Revoke deletes the token with this id; the error wraps ErrNotFound when
// none has it.
func (s *Store) Revoke(ctx context.Context, id string) error {
	all, err := s.List(ctx)
	if err != nil {
		return err
	}
	for _, t := range all {
		if t.ID == id {
			if err := s.kv.Delete(ctx, t.Hash); err != nil {
				return fmt.Errorf("tokens: revoke %s: %w", id, err)
			}
			return nil
		}
	}
	return fmt.Errorf("%w: %s", ErrNotFound, id)
}
