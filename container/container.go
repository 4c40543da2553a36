package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/typeurl/v2"
	"github.com/distribution/reference"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// ErrUnavailable is wrapped when containerd cannot be reached.
var ErrUnavailable = errors.New("container: containerd unavailable")

// Labels weft puts on what it creates.
const (
	LabelManaged   = "weft.managed"
	LabelOwnerPID  = "weft.owner.pid"
	LabelOwnerBoot = "weft.owner.boot"
)

// Config says how to reach containerd and how to run containers.
type Config struct {
	// Address is containerd's socket; default /run/containerd/containerd.sock.
	Address string
	// Namespace is the containerd namespace; default "weft".
	Namespace string
	// Snapshotter names the snapshotter; default overlayfs.
	Snapshotter string
	// KillGrace is the time between SIGTERM and SIGKILL on a stop;
	// default 10s.
	KillGrace time.Duration
	// PidsLimit bounds the processes of one container; default 4096.
	PidsLimit int64
	// ConnectTimeout bounds connecting; default 5s.
	ConnectTimeout time.Duration
}

// Runtime is a connection to containerd. It is safe for concurrent use.
type Runtime struct {
	cfg  Config
	c    *client.Client
	boot string
}

// Connect connects to containerd and checks that it answers. Errors wrap
// ErrUnavailable.
func Connect(ctx context.Context, cfg Config) (*Runtime, error) {
	if cfg.Address == "" {
		cfg.Address = "/run/containerd/containerd.sock"
	}
	if cfg.Namespace == "" {
		cfg.Namespace = "weft"
	}
	if cfg.Snapshotter == "" {
		cfg.Snapshotter = "overlayfs"
	}
	if cfg.KillGrace == 0 {
		cfg.KillGrace = 10 * time.Second
	}
	if cfg.PidsLimit == 0 {
		cfg.PidsLimit = 4096
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if _, err := os.Stat(cfg.Address); err != nil {
		return nil, fmt.Errorf("%w at %s: %v", ErrUnavailable, cfg.Address, err)
	}
	c, err := client.New(cfg.Address, client.WithDefaultNamespace(cfg.Namespace), client.WithTimeout(cfg.ConnectTimeout))
	if err != nil {
		return nil, fmt.Errorf("%w at %s: %v", ErrUnavailable, cfg.Address, err)
	}
	vctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	if _, err := c.Version(vctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("%w at %s: %v", ErrUnavailable, cfg.Address, err)
	}
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return &Runtime{cfg: cfg, c: c, boot: strings.TrimSpace(string(boot))}, nil
}

// Close closes the connection.
func (r *Runtime) Close() error { return r.c.Close() }

func (r *Runtime) ns(ctx context.Context) context.Context {
	return namespaces.WithNamespace(ctx, r.cfg.Namespace)
}

// Spec is what to run in one container.
type Spec struct {
	// ID names the container and its snapshot; [A-Za-z0-9_.-].
	ID string
	// Image is the image reference; short names are docker.io ones.
	Image string
	// Script runs as /bin/sh -c Script.
	Script string
	// Env is added to the image's environment (KEY=VALUE).
	Env []string
	// Workspace is the host directory mounted at /workspace.
	Workspace string
	// NetNS is the network namespace (its file) the container joins; empty
	// shares the host's network.
	NetNS string
	// CPUs is the CFS quota in CPUs; 0 is unlimited.
	CPUs float64
	// Memory is the memory limit in bytes; 0 is unlimited.
	Memory int64
	// Labels are added to the container's and snapshot's labels.
	Labels map[string]string
}

// Result is how a container ended.
type Result struct {
	// ExitCode is the script's exit status; 128+n when signal n killed it.
	ExitCode int
	// OOM is set when the kernel killed the container for its memory limit.
	OOM bool
	// Stopped is set when Run stopped the container because ctx ended.
	Stopped bool
	// Err is set when the container could not be run at all: image,
	// snapshot, task creation. The other fields are then meaningless.
	Err error
}

// Run runs spec to its end, or until ctx ends (then it stops the
// container: SIGTERM, SIGKILL after the grace). It writes the container's
// output to out, calls started once the task runs, and removes the task,
// the container and its snapshot before it returns, whatever happened.
func (r *Runtime) Run(ctx context.Context, spec Spec, started func(time.Time), out io.Writer) Result {
	// Cleanup must happen even when ctx is already cancelled.
	bg := r.ns(context.WithoutCancel(ctx))
	cctx := r.ns(ctx)
	img, err := r.ensureImage(cctx, spec.Image, out)
	if err != nil {
		return Result{Err: err}
	}
	labels := map[string]string{
		LabelManaged:   "true",
		LabelOwnerPID:  strconv.Itoa(os.Getpid()),
		LabelOwnerBoot: r.boot,
	}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	specOpts := []oci.SpecOpts{
		oci.WithImageConfig(img),
		oci.WithProcessArgs("/bin/sh", "-c", spec.Script),
		oci.WithEnv(spec.Env),
		oci.WithProcessCwd("/workspace"),
		oci.WithMounts([]specs.Mount{
			{Destination: "/workspace", Type: "bind", Source: spec.Workspace, Options: []string{"rbind", "rw"}},
			// The container's own cgroups, read-only, so that tools that size
			// themselves by their limits (JVMs, nproc-style probes) see them.
			{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"ro", "nosuid", "noexec", "nodev"}},
		}),
		withNetwork(spec.NetNS),
		oci.WithHostHostsFile,
		oci.WithHostResolvconf,
		oci.WithPidsLimit(r.cfg.PidsLimit),
	}
	if spec.Memory > 0 {
		specOpts = append(specOpts, oci.WithMemoryLimit(uint64(spec.Memory)), oci.WithMemorySwap(spec.Memory))
	}
	if spec.CPUs > 0 {
		const period = 100000
		specOpts = append(specOpts, oci.WithCPUCFS(int64(spec.CPUs*period), period))
	}
	// Objects are created on bg: a cancel in the middle of a create could
	// leave one behind without the caller knowing it exists.
	create := func() (client.Container, error) {
		return r.c.NewContainer(bg, spec.ID,
			client.WithContainerLabels(labels),
			client.WithSnapshotter(r.cfg.Snapshotter),
			client.WithNewSnapshot(spec.ID, img, snapshots.WithLabels(labels)),
			client.WithNewSpec(specOpts...),
		)
	}
	ctr, err := create()
	if errdefs.IsAlreadyExists(err) {
		// Left by a weft process that died while it ran this id (an
		// agent killed while its attempt started, whose takeover got the
		// same attempt number); one of a live process stays.
		var removed bool
		if removed, err = r.removeDead(bg, spec.ID); err == nil && removed {
			ctr, err = create()
		} else if err == nil {
			err = fmt.Errorf("container %s exists and its weft process is alive", spec.ID)
		}
	}
	if err != nil {
		if _, lerr := r.c.LoadContainer(bg, spec.ID); errdefs.IsNotFound(lerr) {
			// The snapshot may exist without the container.
			_ = r.c.SnapshotService(r.cfg.Snapshotter).Remove(bg, spec.ID)
		}
		return Result{Err: fmt.Errorf("create container for image %s: %w", spec.Image, err)}
	}
	defer r.removeContainer(bg, ctr)

	// Subscribe before the task starts so an OOM event cannot be missed.
	evctx, stopEvents := context.WithCancel(cctx)
	defer stopEvents()
	evs, errs := r.c.Subscribe(evctx, `topic=="/tasks/oom"`)
	oom := make(chan struct{})
	var watcher sync.WaitGroup
	defer watcher.Wait()
	defer stopEvents()
	watcher.Go(func() { watchOOM(evctx, evs, errs, spec.ID, oom) })

	task, err := ctr.NewTask(bg, cio.NewCreator(cio.WithStreams(nil, out, out)))
	if err != nil {
		return Result{Err: fmt.Errorf("create task: %w", err)}
	}
	// Deleting the task waits until its output has been copied.
	defer r.removeTask(bg, task)
	exited, err := task.Wait(bg)
	if err != nil {
		return Result{Err: fmt.Errorf("wait task: %w", err)}
	}
	if err := ctx.Err(); err != nil {
		return Result{Err: fmt.Errorf("start task: %w", err)}
	}
	if err := task.Start(bg); err != nil {
		return Result{Err: fmt.Errorf("start task: %w", err)}
	}
	started(time.Now())

	var status client.ExitStatus
	stopped := false
	select {
	case status = <-exited:
	case <-ctx.Done():
		stopped = true
		grace := r.cfg.KillGrace
		if errors.Is(context.Cause(ctx), ErrNoGrace) {
			grace = 0
		}
		status = r.stop(bg, task, exited, grace)
	}
	res := Result{ExitCode: int(status.ExitCode()), Stopped: stopped}
	if status.Error() != nil {
		res.Err = fmt.Errorf("task exit: %w", status.Error())
	}
	if !stopped && res.ExitCode == 128+int(syscall.SIGKILL) {
		// The OOM event and the exit come on different paths; give the
		// event a moment when the exit looks like a kill.
		select {
		case <-oom:
			res.OOM = true
		case <-time.After(time.Second):
		}
	}
	return res
}

// ErrNoGrace, as the cause of a Run context's end (context.Cause), makes
// the stop a SIGKILL at once: the stage is no longer its caller's to
// finish (another attempt may run it already).
var ErrNoGrace = errors.New("container: stop without a grace period")

// stop sends SIGTERM to every process, then SIGKILL after grace (at once
// for no grace), and returns the exit status.
func (r *Runtime) stop(ctx context.Context, task client.Task, exited <-chan client.ExitStatus, grace time.Duration) client.ExitStatus {
	if grace > 0 {
		_ = task.Kill(ctx, syscall.SIGTERM, client.WithKillAll)
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case s := <-exited:
			return s
		case <-t.C:
		}
	}
	kctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = task.Kill(kctx, syscall.SIGKILL, client.WithKillAll)
	select {
	case s := <-exited:
		return s
	case <-kctx.Done():
		return *client.NewExitStatus(uint32(128+int(syscall.SIGKILL)), time.Now(), kctx.Err())
	}
}

// watchOOM closes oom when an OOM event for container id arrives, until
// the subscription ends (its context is cancelled).
func watchOOM(ctx context.Context, evs <-chan *events.Envelope, errs <-chan error, id string, oom chan<- struct{}) {
	closed := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-errs:
			return
		case env := <-evs:
			if env == nil || env.Event == nil || closed {
				continue
			}
			v, err := typeurl.UnmarshalAny(env.Event)
			if err != nil {
				continue
			}
			if e, ok := v.(*eventtypes.TaskOOM); ok && e.ContainerID == id {
				close(oom)
				closed = true
			}
		}
	}
}

func (r *Runtime) removeTask(ctx context.Context, task client.Task) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := task.Delete(ctx, client.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		_ = task.Kill(ctx, syscall.SIGKILL, client.WithKillAll)
		_, _ = task.Delete(ctx, client.WithProcessKill)
	}
}

func (r *Runtime) removeContainer(ctx context.Context, ctr client.Container) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_ = ctr.Delete(ctx, client.WithSnapshotCleanup)
}

// ensureImage returns the image, pulling and unpacking it when needed and
// reporting progress to out.
func (r *Runtime) ensureImage(ctx context.Context, ref string, out io.Writer) (client.Image, error) {
	named, err := reference.ParseDockerRef(ref)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", ref, err)
	}
	name := named.String()
	img, err := r.c.GetImage(ctx, name)
	if errdefs.IsNotFound(err) {
		fmt.Fprintf(out, "weft: image %s is not in containerd's store, pulling it\n", name)
		start := time.Now()
		img, err = r.c.Pull(ctx, name,
			client.WithPullUnpack,
			client.WithPullSnapshotter(r.cfg.Snapshotter),
			client.WithImageHandler(images.HandlerFunc(func(_ context.Context, desc ocispec.Descriptor) ([]ocispec.Descriptor, error) {
				if images.IsLayerType(desc.MediaType) {
					fmt.Fprintf(out, "weft: pulling layer %s (%.1f MB)\n", desc.Digest.Encoded()[:12], float64(desc.Size)/1e6)
				}
				return nil, nil
			})),
		)
		if err != nil {
			return nil, fmt.Errorf("image %s is not in containerd's store and pulling it failed: %w", name, err)
		}
		fmt.Fprintf(out, "weft: pulled %s in %s\n", name, time.Since(start).Round(time.Millisecond))
		return img, nil
	}
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", name, err)
	}
	if ok, err := img.IsUnpacked(ctx, r.cfg.Snapshotter); err != nil || !ok {
		if err := img.Unpack(ctx, r.cfg.Snapshotter); err != nil {
			return nil, fmt.Errorf("unpack image %s: %w", name, err)
		}
	}
	return img, nil
}

// withNetwork puts the container in the network namespace at path, or in
// the host's when path is empty.
func withNetwork(path string) oci.SpecOpts {
	if path == "" {
		return oci.WithHostNamespace(specs.NetworkNamespace)
	}
	return oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: path})
}
