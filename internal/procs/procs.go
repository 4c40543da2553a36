// Package procs finds processes on this host by their environment
// (/proc/<pid>/environ): a stage's processes carry WEFT_RUN_ID and the
// other variables of its job, whoever started them. The tests and weft
// bench chaos use it to see, and to kill, what a stage left running.
package procs

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
)

// Each calls f with the pid and the environment (KEY=VALUE entries) of
// every process but this one whose environment it can read.
func Each(f func(pid int, env []string)) {
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 || pid == self {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		var env []string
		for _, kv := range bytes.Split(data, []byte{0}) {
			if len(kv) > 0 {
				env = append(env, string(kv))
			}
		}
		f(pid, env)
	}
}

// WithEnv returns the pids of the processes but this one whose
// environment holds the exact entry kv (such as WEFT_RUN_ID=...).
func WithEnv(kv string) []int {
	var pids []int
	Each(func(pid int, env []string) {
		for _, e := range env {
			if e == kv {
				pids = append(pids, pid)
				return
			}
		}
	})
	return pids
}
