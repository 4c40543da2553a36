package procs

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of the CPU times in /proc/<pid>/stat (USER_HZ,
// 100 on Linux).
const clockTick = 10 * time.Millisecond

// Usage is what a process has used so far.
type Usage struct {
	// CPU is its user and system time.
	CPU time.Duration
	// RSS is its resident set size in bytes.
	RSS int64
}

// Of reads the usage of process pid from /proc/<pid>/stat.
func Of(pid int) (Usage, error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return Usage{}, fmt.Errorf("usage of %d: %w", pid, err)
	}
	// The command name (field 2) may hold spaces: fields count from the
	// closing parenthesis.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Usage{}, fmt.Errorf("usage of %d: malformed stat", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 22 {
		return Usage{}, fmt.Errorf("usage of %d: malformed stat", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	rss, err3 := strconv.ParseInt(f[21], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return Usage{}, fmt.Errorf("usage of %d: malformed stat", pid)
	}
	return Usage{CPU: time.Duration(utime+stime) * clockTick, RSS: rss * int64(os.Getpagesize())}, nil
}

// Peak returns the peak resident set size of process pid so far, VmHWM
// of /proc/<pid>/status, in bytes. (The ru_maxrss of a child that exited
// is no use for this: Go starts children with vfork, and exec records
// the parent's peak as the child's.)
func Peak(pid int) (int64, error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, fmt.Errorf("status of %d: %w", pid, err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmHWM of %d: %q", pid, l)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmHWM in the status of %d", pid)
}

// ResetPeak sets the peak resident set size of process pid (Peak) to
// its resident set size now, so that Peak then tells the most it held
// since (Linux's clear_refs, value 5).
func ResetPeak(pid int) error {
	if err := os.WriteFile(filepath.Join("/proc", strconv.Itoa(pid), "clear_refs"), []byte("5"), 0); err != nil {
		return fmt.Errorf("reset the peak RSS of %d: %w", pid, err)
	}
	return nil
}
