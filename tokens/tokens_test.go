package tokens_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/weft-ci/weft/test"
	"github.com/weft-ci/weft/tokens"
)

func TestRolesAreOrdered(t *testing.T) {
	tests := []struct {
		have, need tokens.Role
		want       bool
	}{
		{tokens.Viewer, tokens.Viewer, true},
		{tokens.Viewer, tokens.Operator, false},
		{tokens.Operator, tokens.Viewer, true},
		{tokens.Operator, tokens.Admin, false},
		{tokens.Admin, tokens.Operator, true},
		{"root", tokens.Viewer, false},
		{tokens.Admin, "root", false},
	}
	for _, tt := range tests {
		if got := tt.have.Allows(tt.need); got != tt.want {
			t.Errorf("%q.Allows(%q) = %v, want %v", tt.have, tt.need, got, tt.want)
		}
	}
}

// A token is stored as its hash alone, verifies until revoked, and a
// revoked or made-up secret is unknown.
func TestTokensAreStoredHashedAndRevoked(t *testing.T) {
	b := test.Bus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ts, err := tokens.Open(ctx, b.JS)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ts.Create(ctx, "bad/name", tokens.Viewer); !errors.Is(err, tokens.ErrInvalid) {
		t.Errorf("Create with a bad name = %v, want ErrInvalid", err)
	}
	if _, _, err := ts.Create(ctx, "ci", "root"); !errors.Is(err, tokens.ErrInvalid) {
		t.Errorf("Create with a bad role = %v, want ErrInvalid", err)
	}
	secret, tok, err := ts.Create(ctx, "ci", tokens.Operator)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, tokens.Prefix) || tok.Hash != tokens.Hash(secret) {
		t.Errorf("secret %q, hash %q", secret, tok.Hash)
	}
	all, err := ts.List(ctx)
	if err != nil || len(all) != 1 || all[0].Name != "ci" || strings.Contains(all[0].Hash, secret) {
		t.Errorf("List = %+v, %v", all, err)
	}
	if got, err := ts.Verify(ctx, secret); err != nil || got.Role != tokens.Operator {
		t.Errorf("Verify = %+v, %v", got, err)
	}
	for _, s := range []string{"weft_madeup", "nottoken", secret + "x"} {
		if _, err := ts.Verify(ctx, s); !errors.Is(err, tokens.ErrUnknown) {
			t.Errorf("Verify(%q) = %v, want ErrUnknown", s, err)
		}
	}
	if err := ts.Revoke(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.Verify(ctx, secret); !errors.Is(err, tokens.ErrUnknown) {
		t.Errorf("Verify after Revoke = %v, want ErrUnknown", err)
	}
	if err := ts.Revoke(ctx, tok.ID); !errors.Is(err, tokens.ErrNotFound) {
		t.Errorf("Revoke again = %v, want ErrNotFound", err)
	}
}
