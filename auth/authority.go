package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// ErrNoAuthority is wrapped by the error of Load when the directory holds
// no authority (made by Init).
var ErrNoAuthority = errors.New("auth: no authority")

// Files of an authority directory: the seeds of its three identities.
const (
	operatorFile = "operator.nk"
	systemFile   = "system.nk"
	accountFile  = "account.nk"
)

// Authority holds the keys of a NATS operator, its system account and the
// weft account, and signs the credentials of weft's users. A server
// trusts the operator (Configure); a user's credentials, signed by the
// weft account, carry its permissions, so minting them changes nothing
// on the server.
type Authority struct {
	dir      string
	operator nkeys.KeyPair
	system   nkeys.KeyPair
	account  nkeys.KeyPair
}

// Init returns the authority in dir, creating it (the directory, mode
// 0700, and its keys, mode 0600) when dir holds none.
func Init(dir string) (*Authority, error) {
	a, err := Load(dir)
	if !errors.Is(err, ErrNoAuthority) {
		return a, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	for _, f := range []struct {
		name string
		make func() (nkeys.KeyPair, error)
	}{{operatorFile, nkeys.CreateOperator}, {systemFile, nkeys.CreateAccount}, {accountFile, nkeys.CreateAccount}} {
		kp, err := f.make()
		if err != nil {
			return nil, fmt.Errorf("auth: create %s: %w", f.name, err)
		}
		seed, err := kp.Seed()
		if err != nil {
			return nil, fmt.Errorf("auth: create %s: %w", f.name, err)
		}
		// O_EXCL: two servers initialising one directory keep the first keys.
		out, err := os.OpenFile(filepath.Join(dir, f.name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		_, werr := out.Write(append(seed, '\n'))
		if cerr := out.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return nil, fmt.Errorf("auth: write %s: %w", f.name, werr)
		}
	}
	return Load(dir)
}

// Load returns the authority in dir. A directory without one wraps
// ErrNoAuthority.
func Load(dir string) (*Authority, error) {
	a := &Authority{dir: dir}
	for _, f := range []struct {
		name   string
		prefix nkeys.PrefixByte
		kp     *nkeys.KeyPair
	}{{operatorFile, nkeys.PrefixByteOperator, &a.operator}, {systemFile, nkeys.PrefixByteAccount, &a.system}, {accountFile, nkeys.PrefixByteAccount, &a.account}} {
		path := filepath.Join(dir, f.name)
		data, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w in %s (no %s; weft server makes one on its first start with auth on)", ErrNoAuthority, dir, f.name)
		}
		if err != nil {
			return nil, fmt.Errorf("auth: %w", err)
		}
		kp, err := nkeys.FromSeed(bytes.TrimSpace(data))
		if err != nil {
			return nil, fmt.Errorf("auth: %s: %w", path, err)
		}
		pub, _ := kp.PublicKey()
		if !nkeys.IsValidPublicKey(pub) || nkeys.Prefix(pub) != f.prefix {
			return nil, fmt.Errorf("auth: %s: not the seed of the right kind of key", path)
		}
		*f.kp = kp
	}
	return a, nil
}

// Dir returns the directory the authority's keys are in.
func (a *Authority) Dir() string { return a.dir }

// Account returns the public key of the weft account: the account name
// the monitoring endpoints (/jsz?acc=) know weft's streams by.
func (a *Authority) Account() string {
	pub, _ := a.account.PublicKey()
	return pub
}

// Configure puts a server in operator mode: it trusts the authority's
// operator, and knows the system account and the weft account, whose
// JetStream is unlimited (the server's own limits apply).
func (a *Authority) Configure(opts *server.Options) error {
	opPub, _ := a.operator.PublicKey()
	sysPub, _ := a.system.PublicKey()
	accPub := a.Account()
	op := jwt.NewOperatorClaims(opPub)
	op.Name = "weft"
	op.SystemAccount = sysPub
	opJWT, err := op.Encode(a.operator)
	if err != nil {
		return fmt.Errorf("auth: operator: %w", err)
	}
	opClaims, err := jwt.DecodeOperatorClaims(opJWT)
	if err != nil {
		return fmt.Errorf("auth: operator: %w", err)
	}
	sys := jwt.NewAccountClaims(sysPub)
	sys.Name = "SYS"
	sysJWT, err := sys.Encode(a.operator)
	if err != nil {
		return fmt.Errorf("auth: system account: %w", err)
	}
	acc := jwt.NewAccountClaims(accPub)
	// Named by its key: the monitoring endpoints take the key (/jsz?acc=)
	// and show the name, which KEDA's scaler matches against the key.
	acc.Name = accPub
	acc.Limits.JetStreamLimits = jwt.JetStreamLimits{
		MemoryStorage: jwt.NoLimit, DiskStorage: jwt.NoLimit, Streams: jwt.NoLimit,
		Consumer: jwt.NoLimit, MaxAckPending: jwt.NoLimit,
	}
	accJWT, err := acc.Encode(a.operator)
	if err != nil {
		return fmt.Errorf("auth: account: %w", err)
	}
	res := &server.MemAccResolver{}
	if err := res.Store(sysPub, sysJWT); err != nil {
		return fmt.Errorf("auth: system account: %w", err)
	}
	if err := res.Store(accPub, accJWT); err != nil {
		return fmt.Errorf("auth: account: %w", err)
	}
	opts.TrustedOperators = []*jwt.OperatorClaims{opClaims}
	opts.SystemAccount = sysPub
	opts.AccountResolver = res
	return nil
}

// Creds is a user's credentials: its JWT and the seed it signs with.
type Creds struct {
	JWT  string
	Seed []byte
}

// File returns c in the .creds format NATS clients read.
func (c Creds) File() ([]byte, error) {
	return jwt.FormatUserConfig(c.JWT, c.Seed)
}

// Mint makes the credentials of a new user with grant's role and
// permissions, valid for ttl (0: until the authority's keys change).
func (a *Authority) Mint(g Grant, ttl time.Duration) (Creds, error) {
	if err := g.Validate(); err != nil {
		return Creds{}, err
	}
	user, err := nkeys.CreateUser()
	if err != nil {
		return Creds{}, fmt.Errorf("auth: %w", err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	uc := jwt.NewUserClaims(pub)
	uc.Name = g.name()
	uc.Permissions = g.permissions(pub)
	// Set as is, not through TagList.Add, which lowercases: label values
	// keep their case.
	uc.Tags = append(uc.Tags, g.tags()...)
	if ttl > 0 {
		uc.Expires = time.Now().Add(ttl).Unix()
	}
	token, err := uc.Encode(a.account)
	if err != nil {
		return Creds{}, fmt.Errorf("auth: sign user: %w", err)
	}
	return Creds{JWT: token, Seed: seed}, nil
}
