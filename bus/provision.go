package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/weft-ci/weft/subjects"
)

// Provision creates or updates every stream, KV bucket and object bucket of
// package subjects, keeping what runs leave behind for keep (see
// Retention). Running it again with the same configuration changes
// nothing. Job consumers are created by the agents that serve their queues
// (EnsureJobConsumers), with the agents' AckWait. Everything is kept on
// file storage. The streams and buckets are independent, so they are
// created concurrently.
func Provision(ctx context.Context, js jetstream.JetStream, keep time.Duration) error {
	return provision(ctx, js, keep, layoutOf(false))
}

// ProvisionReplicated is Provision with every stream and bucket kept in
// replicas copies on as many servers of a cluster: created so, or
// changed to it. Provision keeps the replicas each has, and creates a
// missing one with one copy; the servers (weft server) provision first,
// with their cluster's size.
func ProvisionReplicated(ctx context.Context, js jetstream.JetStream, keep time.Duration, replicas int) error {
	l := layoutOf(false)
	l.replicas = max(replicas, 1)
	return provision(ctx, js, keep, l)
}

// Provision is the package function Provision on b's connection, except
// on an ephemeral bus (Config.Ephemeral), whose store starts empty: there
// keep 0 is subjects.DefaultRetention, each stream and bucket is created
// outright (updated only if it exists after all), and all but the logs
// stream and the artifacts bucket are kept in memory.
func (b *Bus) Provision(ctx context.Context, keep time.Duration) error {
	return provision(ctx, b.JS, keep, layoutOf(b.ephemeral))
}

// layout says how provision creates streams and buckets.
type layout struct {
	// storage returns the storage of the stream or bucket name (a name of
	// package subjects).
	storage func(name string) jetstream.StorageType
	// fresh says the store starts empty: no earlier retention to keep
	// (see Retention), and creating is tried first, which saves the
	// update attempt CreateOrUpdate starts with.
	fresh bool
	// replicas is the copies every stream and bucket gets; 0 keeps those
	// an existing one has and gives a new one 1.
	replicas int
}

// replicasOf returns the replicas stream (a JetStream stream name)
// gets under l.
func (l layout) replicasOf(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	if l.replicas > 0 || l.fresh {
		return max(l.replicas, 1), nil
	}
	st, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 1, nil
	}
	if err != nil {
		return 0, err
	}
	return max(st.CachedInfo().Config.Replicas, 1), nil
}

// layoutOf returns the layout of a bus that is ephemeral or not. A
// durable one keeps everything on disk, where it may exist already. An
// ephemeral one, whose state is thrown away at exit, starts empty and
// keeps all in memory but build output, artifacts and caches: their size is the
// pipeline's to choose and can exceed memory, where on disk it only takes
// space.
func layoutOf(ephemeral bool) layout {
	if ephemeral {
		return layout{storage: ephemeralStorage, fresh: true}
	}
	return layout{storage: func(string) jetstream.StorageType { return jetstream.FileStorage }}
}

func ephemeralStorage(name string) jetstream.StorageType {
	switch name {
	case subjects.LogsStream, subjects.ArtifactsBucket, subjects.CacheBucket:
		return jetstream.FileStorage
	}
	return jetstream.MemoryStorage
}

// provision is Provision with layout l. Every stream and bucket is
// created in its own goroutine, all waited for; the first error cancels
// the others and is returned.
func provision(ctx context.Context, js jetstream.JetStream, keep time.Duration, l layout) error {
	if keep <= 0 && l.fresh {
		keep = subjects.DefaultRetention
	}
	keep, err := Retention(ctx, js, keep)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	for _, s := range subjects.Streams(keep) {
		cfg := StreamConfig(s)
		cfg.Storage = l.storage(s.Name)
		g.Go(func() (err error) {
			if cfg.Replicas, err = l.replicasOf(ctx, js, s.Name); err != nil {
				return fmt.Errorf("provision stream %s: %w", s.Name, err)
			}
			if err := ensure(l.fresh,
				func() error { _, err := js.CreateStream(ctx, cfg); return err },
				func() error { _, err := js.CreateOrUpdateStream(ctx, cfg); return err },
			); err != nil {
				return fmt.Errorf("provision stream %s: %w", s.Name, err)
			}
			return nil
		})
	}
	for _, b := range subjects.Buckets(keep) {
		cfg := KeyValueConfig(b)
		cfg.Storage = l.storage(b.Name)
		g.Go(func() (err error) {
			if cfg.Replicas, err = l.replicasOf(ctx, js, "KV_"+b.Name); err != nil {
				return fmt.Errorf("provision kv %s: %w", b.Name, err)
			}
			if err := ensure(l.fresh,
				func() error { _, err := js.CreateKeyValue(ctx, cfg); return err },
				func() error { _, err := js.CreateOrUpdateKeyValue(ctx, cfg); return err },
			); err != nil {
				return fmt.Errorf("provision kv %s: %w", b.Name, err)
			}
			return nil
		})
	}
	for _, o := range subjects.ObjectBuckets(keep) {
		cfg := jetstream.ObjectStoreConfig{
			Bucket:      o.Name,
			Description: o.Description,
			TTL:         o.MaxAge,
			Storage:     l.storage(o.Name),
		}
		g.Go(func() (err error) {
			if cfg.Replicas, err = l.replicasOf(ctx, js, "OBJ_"+o.Name); err != nil {
				return fmt.Errorf("provision object store %s: %w", o.Name, err)
			}
			if err := ensure(l.fresh,
				func() error { _, err := js.CreateObjectStore(ctx, cfg); return err },
				func() error { _, err := js.CreateOrUpdateObjectStore(ctx, cfg); return err },
			); err != nil {
				return fmt.Errorf("provision object store %s: %w", o.Name, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// ensure runs create when first is true, and createOrUpdate when first
// is false or create found the stream there with another configuration.
// KV and object store creates report that with ErrStreamNameAlreadyInUse
// too.
func ensure(first bool, create, createOrUpdate func() error) error {
	if first {
		if err := create(); !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return err
		}
	}
	return createOrUpdate()
}

// Retention returns the retention Provision applies for keep: keep itself
// when it is set (an operator chose it), else the one the runs bucket was
// provisioned with, so that a process started without the flag never
// undoes an operator's choice, else subjects.DefaultRetention.
func Retention(ctx context.Context, js jetstream.JetStream, keep time.Duration) (time.Duration, error) {
	if keep > 0 {
		return keep, nil
	}
	kv, err := js.KeyValue(ctx, subjects.RunsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return subjects.DefaultRetention, nil
	}
	if err != nil {
		return 0, fmt.Errorf("bucket %s: %w", subjects.RunsBucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return 0, fmt.Errorf("bucket %s: %w", subjects.RunsBucket, err)
	}
	if st.TTL() <= 0 {
		return subjects.DefaultRetention, nil
	}
	return st.TTL(), nil
}

// EnsureJobConsumers creates the durable consumer of every tier of queue
// on the jobs stream where it is missing. An existing consumer is left as it
// is, so an operator's tuning (AckWait, MaxDeliver with the nats CLI)
// survives agents restarting; it is idempotent. ackWait and maxDeliver set
// those of the consumers it creates; 0 is subjects' default.
func EnsureJobConsumers(ctx context.Context, js jetstream.JetStream, queue string, ackWait time.Duration, maxDeliver int) error {
	if err := subjects.ValidateJobQueue(queue); err != nil {
		return err
	}
	for _, tier := range subjects.Tiers {
		c := subjects.JobConsumerFor(queue, tier)
		if ackWait > 0 {
			c.AckWait = ackWait
		}
		if maxDeliver > 0 {
			c.MaxDeliver = maxDeliver
		}
		if _, err := js.Consumer(ctx, subjects.JobsStream, c.Name); err == nil {
			continue
		} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("provision consumer %s: %w", c.Name, err)
		}
		if _, err := js.CreateConsumer(ctx, subjects.JobsStream, JobConsumerConfig(c)); err != nil {
			return fmt.Errorf("provision consumer %s: %w", c.Name, err)
		}
	}
	return nil
}

// JobConsumer returns the job consumer of queue and tier; it must exist.
func JobConsumer(ctx context.Context, js jetstream.JetStream, queue string, tier subjects.Tier) (jetstream.Consumer, error) {
	name := subjects.JobConsumer(queue, tier)
	c, err := js.Consumer(ctx, subjects.JobsStream, name)
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", name, err)
	}
	return c, nil
}

// StreamConfig turns a stream description of package subjects into a
// JetStream stream configuration.
func StreamConfig(s subjects.Stream) jetstream.StreamConfig {
	cfg := jetstream.StreamConfig{
		Name:              s.Name,
		Description:       s.Description,
		Subjects:          s.Subjects,
		Retention:         jetstream.LimitsPolicy,
		MaxAge:            s.MaxAge,
		MaxMsgsPerSubject: s.MaxMsgsPerSubject,
		Duplicates:        s.Duplicates,
		MaxMsgSize:        s.MaxMsgSize,
		Storage:           jetstream.FileStorage,
		AllowMsgTTL:       s.AllowMsgTTL,
	}
	if s.Retention == subjects.WorkQueue {
		cfg.Retention = jetstream.WorkQueuePolicy
	}
	if s.RepublishSource != "" {
		cfg.RePublish = &jetstream.RePublish{Source: s.RepublishSource, Destination: s.RepublishDest, HeadersOnly: true}
	}
	return cfg
}

// KeyValueConfig turns a bucket description of package subjects into a
// JetStream KV configuration.
func KeyValueConfig(b subjects.Bucket) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         b.Name,
		Description:    b.Description,
		History:        b.History,
		TTL:            b.TTL,
		Storage:        jetstream.FileStorage,
		LimitMarkerTTL: b.PerKeyTTL,
	}
}

// JobConsumerConfig turns a job consumer description of package subjects
// into a JetStream consumer configuration: durable, explicit ack, pull.
func JobConsumerConfig(c subjects.JobConsumerConfig) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       c.Name,
		FilterSubject: c.FilterSubject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.AckWait,
		MaxDeliver:    c.MaxDeliver,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// Keys returns the keys of kv matching filter (a subject-style pattern
// such as "lease.acme.*"), in the order they were last written; none is
// not an error.
func Keys(ctx context.Context, kv jetstream.KeyValue, filter string) ([]string, error) {
	lister, done, err := Establish(ctx, func(ctx context.Context) (jetstream.KeyLister, error) { return kv.ListKeysFiltered(ctx, filter) })
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("list keys %s: %w", filter, err)
	}
	defer done()
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	return keys, nil
}
