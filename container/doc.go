// Package container runs stage scripts in containerd containers through
// containerd's Go client (the v2 module's client package), and imports
// image archives. The agent adapts it to its executor interface; the CLI
// uses it for `weft image import`. It knows nothing of NATS, runs or
// failure categories: Run reports how the container ended and the caller
// decides what that means.
//
// Decisions taken where the design was silent:
//
//   - Everything lives in the containerd namespace "weft" (Config.Namespace).
//   - A container joins the host's network namespace, with the host's
//     /etc/hosts and /etc/resolv.conf: there is no CNI here, and builds
//     need the network (module downloads) as they would on a host agent.
//   - Each container gets a fresh read-write snapshot of its image and the
//     run workspace bind-mounted at /workspace, its working directory.
//   - The container's own cgroups are mounted read-only at /sys/fs/cgroup
//     (containerd's default spec has none), so limits are visible inside.
//   - Memory limits also cap swap at the same value, so a stage over its
//     limit is OOM-killed instead of swapping; a pids limit is always set.
//   - PID 1 (the stage's shell) ignores SIGTERM, as PID 1 does, so a stop
//     sends SIGTERM to every process of the container and SIGKILL to all of
//     them after the grace period.
//   - Every container and snapshot weft creates carries the label
//     weft.managed=true and its owner's pid and boot id; Cleanup removes
//     those whose owner process is gone (a crashed agent), and never those
//     of a live agent sharing the daemon.
//   - An image missing from containerd's store is pulled from its registry
//     (Pull with unpack; no Transfer service, which containerd 1.6 lacks),
//     with progress reported line by line.
//   - A registry on a loopback host (localhost, 127.0.0.0/8, ::1, any
//     port) is pulled over plain HTTP, every other one over HTTPS: that is
//     the default resolver of containerd's client (docker.MatchLocalhost),
//     and weft keeps it rather than adding a list of insecure registries.
//     A loopback registry is a local mirror or a test's; traffic to it
//     never leaves the host.
package container
