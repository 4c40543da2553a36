package container

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"syscall"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"
)

// Import imports an OCI or Docker image archive into containerd's store,
// unpacks its images and returns their names. name, when set, names an
// archive whose images carry no full reference.
func (r *Runtime) Import(ctx context.Context, archive io.Reader, name string) ([]string, error) {
	ctx = r.ns(ctx)
	var opts []client.ImportOpt
	if name != "" {
		opts = append(opts, client.WithIndexName(name))
	}
	imgs, err := r.c.Import(ctx, archive, opts...)
	if err != nil {
		return nil, fmt.Errorf("import image archive: %w", err)
	}
	if len(imgs) == 0 {
		return nil, errors.New("import image archive: it names no image (give it a name)")
	}
	names := make([]string, 0, len(imgs))
	for _, img := range imgs {
		if err := client.NewImage(r.c, img).Unpack(ctx, r.cfg.Snapshotter); err != nil {
			return nil, fmt.Errorf("unpack %s: %w", img.Name, err)
		}
		names = append(names, img.Name)
	}
	return names, nil
}

// Leftovers lists the weft containers and snapshots in the namespace, live
// owner or not: the ids of containers, then of snapshots with no container.
func (r *Runtime) Leftovers(ctx context.Context) (containers, snaps []string, err error) {
	ctx = r.ns(ctx)
	ctrs, err := r.c.Containers(ctx, `labels."`+LabelManaged+`"==true`)
	if err != nil {
		return nil, nil, fmt.Errorf("list containers: %w", err)
	}
	have := map[string]bool{}
	for _, c := range ctrs {
		containers = append(containers, c.ID())
		have[c.ID()] = true
	}
	err = r.c.SnapshotService(r.cfg.Snapshotter).Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if !have[info.Name] {
			snaps = append(snaps, info.Name)
		}
		return nil
	}, `labels."`+LabelManaged+`"==true`)
	if err != nil {
		return nil, nil, fmt.Errorf("list snapshots: %w", err)
	}
	return containers, snaps, nil
}

// Cleanup removes the tasks, containers and snapshots left by weft
// processes that are gone (crashed, or from before a reboot) and returns
// how many containers and snapshots it removed. Those of live processes,
// this one included, are left alone.
func (r *Runtime) Cleanup(ctx context.Context) (int, error) {
	ctx = r.ns(ctx)
	removed := 0
	ctrs, err := r.c.Containers(ctx, `labels."`+LabelManaged+`"==true`)
	if err != nil {
		return 0, fmt.Errorf("list containers: %w", err)
	}
	live := map[string]bool{}
	for _, c := range ctrs {
		labels, err := c.Labels(ctx)
		if err != nil {
			continue
		}
		if r.ownerAlive(labels) {
			live[c.ID()] = true
			continue
		}
		if err := r.remove(ctx, c); err != nil {
			return removed, err
		}
		removed++
	}
	sn := r.c.SnapshotService(r.cfg.Snapshotter)
	var orphans []string
	err = sn.Walk(ctx, func(_ context.Context, info snapshots.Info) error {
		if !live[info.Name] && !r.ownerAlive(info.Labels) {
			orphans = append(orphans, info.Name)
		}
		return nil
	}, `labels."`+LabelManaged+`"==true`)
	if err != nil {
		return removed, fmt.Errorf("list snapshots: %w", err)
	}
	for _, name := range orphans {
		if err := sn.Remove(ctx, name); err != nil && !errdefs.IsNotFound(err) {
			return removed, fmt.Errorf("remove snapshot %s: %w", name, err)
		}
		removed++
	}
	return removed, nil
}

// removeDead removes the container id, its task and its snapshot, and
// the snapshot id when there is no such container, if the weft process
// that created them is gone. It reports whether anything was removed.
func (r *Runtime) removeDead(ctx context.Context, id string) (bool, error) {
	ctx = r.ns(ctx)
	c, err := r.c.LoadContainer(ctx, id)
	if errdefs.IsNotFound(err) {
		sn := r.c.SnapshotService(r.cfg.Snapshotter)
		info, err := sn.Stat(ctx, id)
		if err != nil || r.ownerAlive(info.Labels) {
			return false, nil
		}
		if err := sn.Remove(ctx, id); err != nil && !errdefs.IsNotFound(err) {
			return false, fmt.Errorf("remove snapshot %s: %w", id, err)
		}
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("load container %s: %w", id, err)
	}
	labels, err := c.Labels(ctx)
	if err != nil {
		return false, fmt.Errorf("labels of container %s: %w", id, err)
	}
	if r.ownerAlive(labels) {
		return false, nil
	}
	return true, r.remove(ctx, c)
}

// remove kills and deletes c's task, then deletes c and its snapshot.
func (r *Runtime) remove(ctx context.Context, c client.Container) error {
	if task, err := c.Task(ctx, nil); err == nil {
		r.removeTask(ctx, task)
	}
	if err := c.Delete(ctx, client.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("remove container %s: %w", c.ID(), err)
	}
	return nil
}

// ownerAlive reports whether the process that created an object with these
// labels still runs: same boot, and its pid is alive.
func (r *Runtime) ownerAlive(labels map[string]string) bool {
	if labels[LabelOwnerBoot] != r.boot {
		return false
	}
	pid, err := strconv.Atoi(labels[LabelOwnerPID])
	if err != nil || pid <= 0 {
		return false
	}
	if pid == os.Getpid() {
		return true
	}
	err = syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
