package test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// outsideNets numbers the outside networks tests make, for their names
// and addresses.
var outsideNets atomic.Int32

// outside is a network namespace a test makes to stand for the world
// outside the machine: a veth pair from the host (host end HostAddr, a
// host address like any other) and a TCP listener inside at FarAddr.
type outside struct {
	HostAddr, FarAddr string
	ln                net.Listener
}

// startOutside makes an outside network and its listener, which accepts
// and closes connections; the test's cleanup removes both.
func startOutside(t *testing.T) *outside {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "a network namespace needs root")
	}
	n := outsideNets.Add(1)
	name, link := fmt.Sprintf("weft-test-out-%d-%d", os.Getpid(), n), fmt.Sprintf("wto%d", n)
	o := &outside{HostAddr: fmt.Sprintf("10.214.%d.1", n), FarAddr: fmt.Sprintf("10.214.%d.2", n)}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	run("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", name)
	run("addr", "add", o.HostAddr+"/30", "dev", link)
	run("link", "set", link, "up")
	run("-n", name, "addr", "add", o.FarAddr+"/30", "dev", "eth0")
	run("-n", name, "link", "set", "eth0", "up")
	// The listener's socket is made inside: a thread enters the
	// namespace for it, and is thrown away after (never unlocked).
	type made struct {
		ln  net.Listener
		err error
	}
	ch := make(chan made, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + name)
		if err == nil {
			err = unix.Setns(int(f.Fd()), syscall.CLONE_NEWNET)
			f.Close()
		}
		if err != nil {
			ch <- made{err: err}
			return
		}
		ln, err := net.Listen("tcp", o.FarAddr+":0")
		ch <- made{ln, err}
	}()
	m := <-ch
	if m.err != nil {
		t.Fatalf("listen in %s: %v", name, m.err)
	}
	o.ln = m.ln
	t.Cleanup(func() { o.ln.Close() })
	go func() {
		for {
			c, err := o.ln.Accept()
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err == nil {
				c.Close()
			}
		}
	}()
	return o
}

// Port is the outside listener's port.
func (o *outside) Port() int { return o.ln.Addr().(*net.TCPAddr).Port }
