package stagenet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/rs/zerolog"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrUnavailable is wrapped by the errors of Setup when stages cannot be
// isolated here: not root, or iptables missing.
var ErrUnavailable = errors.New("stagenet: isolated stage networks unavailable")

// DefaultSubnet is the IPv4 range stage networks take their addresses
// from: a /30 per stage, the host end first.
const DefaultSubnet = "10.213.0.0/16"

// Names on the host.
const (
	// linkPrefix starts the name of the host end of every stage's veth
	// pair; the firewall rules match it (iptables' "weftv+").
	linkPrefix = "weftv"
	// nsPrefix starts the name of every stage's network namespace
	// (as ip netns names them: /run/netns/<name>).
	nsPrefix = "weft-stage-"
	// stateDir holds the claims of the /30s in use, one file per index
	// naming the process that holds it, and the lock that serialises
	// claiming them across agents.
	stateDir = "/run/weft/stagenet"
)

// Config configures Setup.
type Config struct {
	// Subnet is the IPv4 range of the stage networks; default
	// DefaultSubnet. Every agent on a machine must use the same.
	Subnet string
	// Logger receives what Setup changes on the host.
	Logger zerolog.Logger
}

// Manager makes the network namespaces of stages on one machine.
type Manager struct {
	subnet netip.Prefix
	blocks int // /30s in subnet
	log    zerolog.Logger
}

// Setup checks that stages can be isolated here and readies the host
// once for every agent on it: IPv4 forwarding on, and firewall rules that
// refuse what a stage sends to the host itself (any of its addresses, so
// no port a server listens on is reachable) or to another stage, accept
// the rest, and masquerade it on the way out. Errors wrap ErrUnavailable.
func Setup(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Subnet == "" {
		cfg.Subnet = DefaultSubnet
	}
	subnet, err := netip.ParsePrefix(cfg.Subnet)
	if err != nil || !subnet.Addr().Is4() || subnet.Bits() > 28 {
		return nil, fmt.Errorf("stagenet: subnet %q: want an IPv4 prefix of /28 or wider", cfg.Subnet)
	}
	subnet = subnet.Masked()
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: it needs root (network namespaces, veth pairs, firewall rules)", ErrUnavailable)
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		return nil, fmt.Errorf("%w: iptables not found (install iptables)", ErrUnavailable)
	}
	m := &Manager{subnet: subnet, blocks: 1 << (30 - subnet.Bits()), log: cfg.Logger}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return nil, fmt.Errorf("%w: enable IPv4 forwarding: %v", ErrUnavailable, err)
	}
	src := subnet.String()
	links := linkPrefix + "+"
	// Checked then inserted, so several agents add each once; inserted at
	// the top, so they come before other rules (a FORWARD policy of DROP).
	rules := [][]string{
		{"-t", "nat", "POSTROUTING", "-s", src, "!", "-o", links, "-j", "MASQUERADE"},
		{"FORWARD", "-o", links, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"},
		{"FORWARD", "-i", links, "!", "-o", links, "-j", "ACCEPT"},
		{"FORWARD", "-i", links, "-o", links, "-j", "REJECT"},
		{"INPUT", "-i", links, "-j", "REJECT"},
	}
	for _, r := range rules {
		if err := ensureRule(ctx, r); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	m.reap()
	return m, nil
}

// reap removes the networks that killed agents left: those whose claim
// names a process that is gone.
func (m *Manager) reap() {
	unlock, err := lock()
	if err != nil {
		m.log.Warn().Err(err).Msg("reap stage networks")
		return
	}
	defer unlock()
	entries, _ := os.ReadDir(stateDir)
	for _, e := range entries {
		index, err := strconv.Atoi(e.Name())
		if err != nil || claimLive(filepath.Join(stateDir, e.Name())) {
			continue
		}
		if err := removeNamed(filepath.Join(netnsDir, nsPrefix+e.Name())); err != nil {
			m.log.Warn().Err(err).Msg("reap stage network")
			continue
		}
		if l, err := netlink.LinkByName(linkPrefix + strconv.Itoa(index)); err == nil {
			_ = netlink.LinkDel(l)
		}
		_ = os.Remove(filepath.Join(stateDir, e.Name()))
	}
}

// claimLive reports whether the claim file at path names a live process.
func claimLive(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	return pid > 0 && syscall.Kill(pid, 0) == nil
}

// ensureRule inserts an iptables rule unless it is there: r is
// [-t TABLE] CHAIN SPEC...
func ensureRule(ctx context.Context, r []string) error {
	var table []string
	if r[0] == "-t" {
		table, r = r[:2], r[2:]
	}
	chain, spec := r[0], r[1:]
	check := append(append(append([]string{"-w"}, table...), "-C", chain), spec...)
	if exec.CommandContext(ctx, "iptables", check...).Run() == nil {
		return nil
	}
	insert := append(append(append([]string{"-w"}, table...), "-I", chain), spec...)
	if out, err := exec.CommandContext(ctx, "iptables", insert...).CombinedOutput(); err != nil {
		return fmt.Errorf("iptables %s: %v: %s", strings.Join(insert, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Net is one stage's network namespace: a loopback of its own and a veth
// pair to the host, through which it reaches everything but the host and
// other stages.
type Net struct {
	// Name is the namespace's name (ip netns).
	Name string
	// Path is the namespace's file, for an OCI spec's network namespace.
	Path string
	// Addr is the stage's address; Gateway the host end's.
	Addr, Gateway netip.Addr

	m     *Manager
	index int
}

// Open makes a stage's network namespace. Close removes it.
func (m *Manager) Open(ctx context.Context) (*Net, error) {
	index, err := m.claim(ctx)
	if err != nil {
		return nil, err
	}
	n := &Net{Name: nsPrefix + strconv.Itoa(index), m: m, index: index}
	n.Path = filepath.Join(netnsDir, n.Name)
	base := m.subnet.Addr().As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(index) * 4
	n.Gateway = netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v + 1)})
	n.Addr = n.Gateway.Next()
	// Made on a thread of its own, which enters the new namespace to
	// make it and is thrown away after (never unlocked), whatever
	// happened: no other goroutine ever runs in it.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- n.make(linkPrefix + strconv.Itoa(index))
	}()
	if err := <-errc; err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// netnsDir is where named network namespaces are (ip netns).
const netnsDir = "/run/netns"

// make makes the namespace and its veth pair, host end named host. It
// runs on a locked thread that is discarded after.
func (n *Net) make(host string) error {
	// What a killed agent left under this index goes first.
	if err := removeNamed(n.Path); err != nil {
		return err
	}
	if l, err := netlink.LinkByName(host); err == nil {
		_ = netlink.LinkDel(l)
	}
	origin, err := netns.Get()
	if err != nil {
		return fmt.Errorf("stagenet: %w", err)
	}
	defer origin.Close()
	ns, err := netns.NewNamed(n.Name) // the thread is in it now
	if err != nil {
		return fmt.Errorf("stagenet: make %s: %w", n.Name, err)
	}
	defer ns.Close()
	if err := netns.Set(origin); err != nil {
		return fmt.Errorf("stagenet: leave %s: %w", n.Name, err)
	}
	in, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("stagenet: %s: %w", n.Name, err)
	}
	defer in.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("stagenet: veth %s: %w", host, err)
	}
	// No IPv6 on the host end: no link-local address for a stage to reach
	// the host by.
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+host+"/disable_ipv6", []byte("1\n"), 0o644)
	hostLink, err := netlink.LinkByName(host)
	if err != nil {
		return fmt.Errorf("stagenet: veth %s: %w", host, err)
	}
	if err := netlink.AddrAdd(hostLink, addr(n.Gateway)); err != nil {
		return fmt.Errorf("stagenet: address of %s: %w", host, err)
	}
	if err := netlink.LinkSetUp(hostLink); err != nil {
		return fmt.Errorf("stagenet: %s up: %w", host, err)
	}
	for _, name := range []string{"lo", "eth0"} {
		l, err := in.LinkByName(name)
		if err != nil {
			return fmt.Errorf("stagenet: %s in %s: %w", name, n.Name, err)
		}
		if name == "eth0" {
			if err := in.AddrAdd(l, addr(n.Addr)); err != nil {
				return fmt.Errorf("stagenet: address in %s: %w", n.Name, err)
			}
		}
		if err := in.LinkSetUp(l); err != nil {
			return fmt.Errorf("stagenet: %s up in %s: %w", name, n.Name, err)
		}
		if name == "eth0" {
			if err := in.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: n.Gateway.AsSlice()}); err != nil {
				return fmt.Errorf("stagenet: default route in %s: %w", n.Name, err)
			}
		}
	}
	return nil
}

// addr is a's address on its /30.
func addr(a netip.Addr) *netlink.Addr {
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(30, 32)}}
}

// Close removes the namespace (and with it the veth pair) and frees its
// addresses.
func (n *Net) Close() error {
	err := removeNamed(n.Path)
	n.m.release(n.index)
	return err
}

// removeNamed removes a named namespace's file: unmounted first if it is
// mounted (a process killed between making and mounting it leaves a bare
// file, which netns.DeleteNamed cannot remove).
func removeNamed(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("stagenet: unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("stagenet: remove %s: %w", path, err)
	}
	return nil
}

// Start starts cmd inside the namespace: the calling goroutine's thread
// enters it for the fork, so the process and its children are born there,
// and leaves it after. The caller must have locked its goroutine to its
// thread (runtime.LockOSThread), and keep it locked while a process
// started with Pdeathsig runs. Should the thread fail to leave, it stays
// locked: Go discards it with the goroutine.
func (n *Net) Start(cmd *exec.Cmd) error {
	target, err := os.Open(n.Path)
	if err != nil {
		return fmt.Errorf("stagenet: %w", err)
	}
	defer target.Close()
	own, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return fmt.Errorf("stagenet: %w", err)
	}
	defer own.Close()
	if err := unix.Setns(int(target.Fd()), syscall.CLONE_NEWNET); err != nil {
		return fmt.Errorf("stagenet: enter %s: %w", n.Name, err)
	}
	startErr := cmd.Start()
	if err := unix.Setns(int(own.Fd()), syscall.CLONE_NEWNET); err != nil {
		runtime.LockOSThread() // once more: the deferred unlock leaves this one
		return errors.Join(startErr, fmt.Errorf("stagenet: leave %s: %w", n.Name, err))
	}
	return startErr
}

// claim takes the lowest free /30 of the subnet for this process, under
// a lock all agents on the machine share. A claim whose process is gone
// (a killed agent) is free.
func (m *Manager) claim(ctx context.Context) (int, error) {
	unlock, err := lock()
	if err != nil {
		return 0, err
	}
	defer unlock()
	for i := range m.blocks {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		path := filepath.Join(stateDir, strconv.Itoa(i))
		if claimLive(path) {
			continue
		}
		if err := os.WriteFile(path, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
			return 0, fmt.Errorf("stagenet: claim: %w", err)
		}
		return i, nil
	}
	return 0, fmt.Errorf("stagenet: all %d stage networks of %s are in use", m.blocks, m.subnet)
}

func (m *Manager) release(index int) {
	unlock, err := lock()
	if err != nil {
		m.log.Warn().Err(err).Int("index", index).Msg("release stage network")
		return
	}
	defer unlock()
	_ = os.Remove(filepath.Join(stateDir, strconv.Itoa(index)))
}

// lock takes the machine-wide claim lock.
func lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(stateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("stagenet: lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("stagenet: lock: %w", err)
	}
	return func() { f.Close() }, nil
}
