package bus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	neturl "net/url"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/weft-ci/weft/auth"
)

// ErrUnavailable is wrapped by errors that mean NATS cannot be reached or
// the embedded server cannot be started.
var ErrUnavailable = errors.New("bus: nats unavailable")

// ErrInvalidConfig is wrapped by Config validation errors.
var ErrInvalidConfig = errors.New("bus: invalid config")

// Config says how to reach NATS.
type Config struct {
	// URL of the NATS server(s), comma separated. Empty starts an
	// embedded server.
	URL string
	// CredsFile is a NATS credentials file for URL; optional.
	CredsFile string
	// Name is the client connection name shown by the server.
	Name string
	// StoreDir is the embedded server's JetStream directory; required
	// when URL is empty.
	StoreDir string
	// Listen is the embedded server's client address ("127.0.0.1:4222",
	// or port 0 for a free port); empty opens no port.
	Listen string
	// SyncAlways makes the embedded server fsync every write.
	SyncAlways bool
	// ServerName names the embedded server (default weft-embedded); each
	// member of a cluster needs its own.
	ServerName string
	// Cluster makes the embedded server a member of a cluster; nil runs
	// it standalone.
	Cluster *Cluster
	// JSDomain is the JetStream domain whose streams the client uses:
	// the hub's, for a client of a leaf node that runs a domain of its own;
	// empty is the server's own.
	JSDomain string
	// Domain is the embedded server's JetStream domain; empty is none.
	// A leaf node that runs JetStream needs one other than its hub's.
	Domain string
	// LeafListen is the address the embedded server takes leaf node
	// connections on (a hub); empty takes none.
	LeafListen string
	// Leaf makes the embedded server a leaf node of the hub at these
	// URLs (nats://host:port of the hub's leaf port).
	Leaf []string
	// ConfigFile is a nats-server configuration file the embedded server
	// is made from, for what Config does not say (TLS, its own accounts):
	// it overrides Listen, Cluster, Leaf, Domain, Monitor and Auth, which
	// must be empty; JetStream is on, in StoreDir unless the file names
	// its own store_dir. CredsFile then authenticates the in-process
	// connection when the file requires it.
	ConfigFile string
	// Auth turns on the embedded server's authentication: only users with
	// credentials its authority signed get in, with their role's
	// permissions (package auth). The in-process connection gets a
	// dispatcher's. Nil takes anyone.
	Auth *auth.Authority
	// LeafCreds are the credentials a leaf node presents to its hub (Leaf)
	// when the hub has auth on.
	LeafCreds string
	// Monitor is the embedded server's HTTP monitoring address (NATS's
	// own /varz, /jsz, /healthz); empty opens none.
	Monitor string
	// Ephemeral says the embedded server's state is thrown away after
	// Close (StoreDir is a temporary directory its owner removes), so
	// Bus.Provision keeps weft's control-plane streams and buckets in
	// memory: nothing survives that the removal would have kept, and
	// creating them and shutting the server down cost next to nothing
	// (a file-backed durable consumer's shutdown waits for its state
	// file). Build output and artifacts, which can outgrow memory, stay
	// on disk. It needs an empty URL.
	Ephemeral bool
	// Unbuffered makes a publish fail while the connection is down instead
	// of being buffered and sent on reconnect. Agents set it: a stage's
	// finish sent long after its agent gave the job up would be a second
	// result.
	Unbuffered bool
	// ConnectTimeout bounds connecting; default 5s.
	ConnectTimeout time.Duration
	// Logger receives connection and embedded-server logs.
	Logger zerolog.Logger
}

// Bus is an open connection to NATS with JetStream, and the embedded server
// when there is one.
type Bus struct {
	// Conn is the NATS connection.
	Conn *nats.Conn
	// JS is the JetStream API on Conn.
	JS jetstream.JetStream

	server    *server.Server
	ephemeral bool // Config.Ephemeral: provision in memory
	log       zerolog.Logger
}

// Open connects to cfg.URL, or starts an embedded server in cfg.StoreDir
// and connects to it in-process. Close releases both. Errors wrap
// ErrUnavailable or ErrInvalidConfig.
func Open(ctx context.Context, cfg Config) (*Bus, error) {
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.Name == "" {
		cfg.Name = "weft"
	}
	if cfg.Ephemeral && cfg.URL != "" {
		return nil, fmt.Errorf("%w: an ephemeral bus needs the embedded server, not %s", ErrInvalidConfig, cfg.URL)
	}
	b := &Bus{ephemeral: cfg.Ephemeral, log: cfg.Logger}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.Timeout(cfg.ConnectTimeout),
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				b.log.Warn().Err(err).Msg("nats disconnected")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			b.log.Info().Str("url", nc.ConnectedUrl()).Msg("nats reconnected")
		}),
	}
	if cfg.Unbuffered {
		opts = append(opts, nats.ReconnectBufSize(-1))
	}
	url := cfg.URL
	if url == "" {
		ns, err := startEmbedded(cfg)
		if err != nil {
			return nil, err
		}
		b.server = ns
		opts = append(opts, nats.InProcessServer(ns))
		if cfg.CredsFile != "" {
			opts = append(opts, nats.UserCredentials(cfg.CredsFile))
		}
		if cfg.Auth != nil {
			creds, err := cfg.Auth.Mint(auth.Grant{Role: auth.Dispatcher, Name: cfg.Name}, 0)
			if err != nil {
				b.shutdownServer()
				return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
			opts = append(opts, nats.UserJWTAndSeed(creds.JWT, string(creds.Seed)))
		}
	} else if cfg.CredsFile != "" {
		id, err := auth.ReadCreds(cfg.CredsFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
		opts = append(opts, nats.UserCredentials(cfg.CredsFile), nats.CustomInboxPrefix(id.InboxPrefix()))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		b.shutdownServer()
		return nil, connectError(url, cfg.CredsFile, err)
	}
	b.Conn = nc
	var js jetstream.JetStream
	if cfg.JSDomain != "" {
		js, err = jetstream.NewWithDomain(nc, cfg.JSDomain)
	} else {
		js, err = jetstream.New(nc)
	}
	if err != nil {
		b.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	b.JS = js
	if b.server != nil {
		return b, nil // startEmbedded saw JetStream on
	}
	// Fail here, not on the first publish, when JetStream is off. A leaf
	// node whose hub link is not up yet, or a cluster electing its meta
	// leader, answers "not enabled" or not at all for a moment: ask again
	// until ConnectTimeout, then say what the server last said.
	actx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	var last error
	_, done, err := Establish(actx, func(ctx context.Context) (*jetstream.AccountInfo, error) {
		info, err := js.AccountInfo(ctx)
		if err != nil {
			last = err
		}
		return info, err
	})
	if err != nil {
		b.Close()
		if last != nil {
			err = last
		}
		return nil, fmt.Errorf("%w: jetstream on %s: %v", ErrUnavailable, displayURL(url), err)
	}
	done()
	return b, nil
}

// connectError explains a failed connection, an authentication failure
// in words that say what to do.
func connectError(url, creds string, err error) error {
	switch {
	case errors.Is(err, nats.ErrAuthorization) && creds == "":
		return fmt.Errorf("%w: connect %s: the server requires credentials and none were given: pass --creds FILE (env WEFT_CREDS), made with weft creds on the server's machine: %v", ErrUnavailable, displayURL(url), err)
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return fmt.Errorf("%w: connect %s: the server refused the credentials in %s (another server's, expired or revoked): %v", ErrUnavailable, displayURL(url), creds, err)
	}
	return fmt.Errorf("%w: connect %s: %v", ErrUnavailable, displayURL(url), err)
}

// Cluster is the embedded server's place in a NATS cluster, whose
// members replicate JetStream's streams among them (RAFT): with three or
// more, the loss of any one loses nothing.
type Cluster struct {
	// Name is the cluster's name, the same on every member.
	Name string
	// Listen is the host:port the other members' routes connect to.
	Listen string
	// Routes are the members' cluster URLs (nats://host:port); the list
	// may name this member too, so every member can have the same one.
	Routes []string
}

// Size returns how many members the routes name, this one included.
func (c *Cluster) Size() int {
	seen := map[string]bool{}
	for _, r := range c.Routes {
		u, err := neturl.Parse(r)
		if err != nil || u.Host == "" || u.Host == c.Listen {
			continue
		}
		seen[u.Host] = true
	}
	return len(seen) + 1
}

func (c *Cluster) options(opts *server.Options) error {
	if c.Name == "" || c.Listen == "" {
		return fmt.Errorf("%w: a cluster member needs a cluster name and a cluster listen address", ErrInvalidConfig)
	}
	host, port, err := hostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("%w: cluster listen %q: %v", ErrInvalidConfig, c.Listen, err)
	}
	opts.Cluster = server.ClusterOpts{Name: c.Name, Host: host, Port: port}
	opts.Routes, err = natsURLs("route", c.Routes, "nats")
	return err
}

// natsURLs parses urls (what names them in errors), each
// scheme://host:port with one of schemes.
func natsURLs(what string, urls []string, schemes ...string) ([]*neturl.URL, error) {
	out := make([]*neturl.URL, 0, len(urls))
	for _, r := range urls {
		u, err := neturl.Parse(r)
		if err != nil || !slices.Contains(schemes, u.Scheme) || u.Host == "" {
			return nil, fmt.Errorf("%w: %s %q: want nats://host:port", ErrInvalidConfig, what, r)
		}
		out = append(out, u)
	}
	return out, nil
}

// hostPort splits a listen address; port 0 is a free one.
func hostPort(addr string) (string, int, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		return "", 0, fmt.Errorf("bad port %q", port)
	}
	if p == 0 {
		p = server.RANDOM_PORT
	}
	return host, p, nil
}

func displayURL(url string) string {
	if url == "" {
		return "embedded server"
	}
	return url
}

// maxControlLine bounds a protocol line the embedded server reads: room
// for the credentials of an agent of 16 queues with 4 labels.
const maxControlLine = 256 << 10

func startEmbedded(cfg Config) (*server.Server, error) {
	if cfg.StoreDir == "" {
		return nil, fmt.Errorf("%w: embedded server needs a store directory", ErrInvalidConfig)
	}
	if err := os.MkdirAll(cfg.StoreDir, 0o750); err != nil {
		return nil, fmt.Errorf("%w: store dir: %v", ErrUnavailable, err)
	}
	if cfg.ConfigFile != "" {
		return startFromFile(cfg)
	}
	opts := &server.Options{
		ServerName: cmp.Or(cfg.ServerName, "weft-embedded"),
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		DontListen: true,
		NoSigs:     true,
		SyncAlways: cfg.SyncAlways,
		MaxPayload: 1 << 20,
		// An agent's credentials list each job consumer of its queues:
		// its CONNECT line outgrows the default 4 KiB.
		MaxControlLine: maxControlLine,
	}
	if cfg.Listen != "" {
		host, p, err := hostPort(cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("%w: listen %q: %v", ErrInvalidConfig, cfg.Listen, err)
		}
		opts.DontListen, opts.Host, opts.Port = false, host, p
	}
	if cfg.Cluster != nil {
		if err := cfg.Cluster.options(opts); err != nil {
			return nil, err
		}
	}
	opts.JetStreamDomain = cfg.Domain
	if cfg.LeafListen != "" {
		host, p, err := hostPort(cfg.LeafListen)
		if err != nil {
			return nil, fmt.Errorf("%w: leaf listen %q: %v", ErrInvalidConfig, cfg.LeafListen, err)
		}
		opts.LeafNode.Host, opts.LeafNode.Port = host, p
	}
	if len(cfg.Leaf) > 0 {
		urls, err := natsURLs("leaf hub", cfg.Leaf, "nats", "nats-leaf")
		if err != nil {
			return nil, err
		}
		opts.LeafNode.Remotes = []*server.RemoteLeafOpts{{URLs: urls, Credentials: cfg.LeafCreds}}
	}
	if cfg.Auth != nil {
		if err := cfg.Auth.Configure(opts); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
		}
	}
	if cfg.Monitor != "" {
		host, p, err := hostPort(cfg.Monitor)
		if err != nil {
			return nil, fmt.Errorf("%w: monitor %q: %v", ErrInvalidConfig, cfg.Monitor, err)
		}
		opts.HTTPHost, opts.HTTPPort = host, p
	}
	return startServer(cfg, opts)
}

// startFromFile starts the embedded server from cfg.ConfigFile.
func startFromFile(cfg Config) (*server.Server, error) {
	if cfg.Listen != "" || cfg.Cluster != nil || len(cfg.Leaf) > 0 || cfg.LeafListen != "" || cfg.Domain != "" || cfg.Monitor != "" || cfg.Auth != nil {
		return nil, fmt.Errorf("%w: %s configures the server: listen, cluster, leaf, domain, monitoring and auth go in it", ErrInvalidConfig, cfg.ConfigFile)
	}
	opts, err := server.ProcessConfigFile(cfg.ConfigFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidConfig, err)
	}
	opts.JetStream, opts.NoSigs = true, true
	if opts.StoreDir == "" {
		opts.StoreDir = cfg.StoreDir
	}
	if opts.ServerName == "" {
		opts.ServerName = cmp.Or(cfg.ServerName, "weft-embedded")
	}
	opts.SyncAlways = opts.SyncAlways || cfg.SyncAlways
	if opts.MaxControlLine == 0 {
		opts.MaxControlLine = maxControlLine
	}
	return startServer(cfg, opts)
}

// startServer starts and waits for the embedded server of opts.
func startServer(cfg Config, opts *server.Options) (*server.Server, error) {
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("%w: embedded server: %v", ErrUnavailable, err)
	}
	ns.SetLoggerV2(serverLogger{cfg.Logger.With().Str("component", "nats-server").Logger()}, false, false, false)
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("%w: embedded server not ready after 10s", ErrUnavailable)
	}
	// Start has enabled JetStream by now, or logged why it could not.
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		return nil, fmt.Errorf("%w: embedded server: jetstream did not start in %s", ErrUnavailable, opts.StoreDir)
	}
	return ns, nil
}

// ClientURL is the URL other processes (agents, the nats CLI) use to reach
// the embedded server; empty when it listens on no port or there is none.
func (b *Bus) ClientURL() string {
	if b.server == nil || b.server.Addr() == nil {
		return ""
	}
	return b.server.ClientURL()
}

// MonitorURL is the embedded server's monitoring URL (http://host:port),
// empty when it has none.
func (b *Bus) MonitorURL() string {
	if b.server == nil {
		return ""
	}
	addr := b.server.MonitorAddr()
	if addr == nil {
		return ""
	}
	return "http://" + addr.String()
}

// Embedded reports whether b runs its own server.
func (b *Bus) Embedded() bool { return b.server != nil }

// Close drains nothing: it closes the connection and shuts the embedded
// server down, waiting until it has stopped.
func (b *Bus) Close() {
	if b.Conn != nil {
		b.Conn.Close()
	}
	b.shutdownServer()
}

func (b *Bus) shutdownServer() {
	if b.server == nil {
		return
	}
	// A server that listens on no port has had one client, b.Conn, which
	// is closed: the notice Shutdown sends to pending pull requests, and
	// waits 50ms to get out, has nobody left to reach. Stopping
	// JetStream first skips it; it stops the streams as Shutdown does.
	if b.server.Addr() == nil {
		if err := b.server.ShutdownJetStream(); err != nil {
			b.log.Warn().Err(err).Msg("stop jetstream")
		}
	}
	b.server.Shutdown()
	b.server.WaitForShutdown()
}

// serverLogger adapts zerolog to the nats-server logger interface.
type serverLogger struct{ log zerolog.Logger }

func (l serverLogger) Noticef(format string, v ...any) { l.log.Debug().Msgf(format, v...) }
func (l serverLogger) Warnf(format string, v ...any)   { l.log.Warn().Msgf(format, v...) }
func (l serverLogger) Fatalf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l serverLogger) Errorf(format string, v ...any)  { l.log.Error().Msgf(format, v...) }
func (l serverLogger) Debugf(format string, v ...any)  { l.log.Trace().Msgf(format, v...) }
func (l serverLogger) Tracef(format string, v ...any)  { l.log.Trace().Msgf(format, v...) }
