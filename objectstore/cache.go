package objectstore

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/oklog/ulid/v2"

	"github.com/weft-ci/weft/internal/bytesize"
	"github.com/weft-ci/weft/subjects"
)

// This file holds stage caches: entries of a repository named by a key,
// each one archive in the object store bucket weft_cache, indexed by the
// KV bucket weft_cache_index.
//
// Decisions taken where the design was silent:
//
//   - A key, once saved, never changes: the index entry is created, never
//     replaced, so of concurrent savers of one key the first to finish
//     wins and the others delete what they uploaded. Each saver uploads
//     under a name of its own (<repo>/<ULID>), so no upload can overwrite
//     or interleave with another.
//   - A saver checks for the key before it uploads: a key that has an
//     entry is not archived again.
//   - Least recently used goes first: a restore marks its entry used
//     (at most once a minute), and after every save the repository's
//     entries not used for CacheLimits.MaxUnused go, then the least
//     recently used until what is left fits CacheLimits.Quota.
//   - The index is written after the archive and removed before it, so an
//     entry found always had its archive; one whose archive is gone (past
//     the bucket's MaxAge) reads as a miss and its entry is removed.

// Cache defaults.
const (
	// DefaultCacheQuota bounds the cache entries of one repository: 10 GiB.
	DefaultCacheQuota int64 = 10 << 30
	// DefaultCacheMaxUnused is how long an entry stays unused before it
	// goes: 7 days.
	DefaultCacheMaxUnused = 7 * 24 * time.Hour
	// touchEvery is how often an entry's use is recorded, at most.
	touchEvery = time.Minute
)

// CacheLimits bound a repository's cache; a zero field is its default.
type CacheLimits struct {
	// Quota bounds the bytes of one repository's entries, and so of one
	// entry (DefaultCacheQuota).
	Quota int64
	// MaxUnused is how long an entry is kept unused (DefaultCacheMaxUnused).
	MaxUnused time.Duration
}

func (l CacheLimits) withDefaults() CacheLimits {
	if l.Quota <= 0 {
		l.Quota = DefaultCacheQuota
	}
	if l.MaxUnused <= 0 {
		l.MaxUnused = DefaultCacheMaxUnused
	}
	return l
}

// CacheEntry is one saved cache key of a repository.
type CacheEntry struct {
	// Repo is the repository the entry belongs to ("" for local runs).
	Repo string `json:"repo"`
	// Key is the expanded cache key.
	Key string `json:"key"`
	// Object is the archive's name in the cache bucket.
	Object string `json:"object"`
	// Size and SHA256 describe the archive.
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Run and Stage saved it.
	Run   string `json:"run"`
	Stage string `json:"stage"`
	// Created is when it was saved, Used when it was last restored.
	Created time.Time `json:"created"`
	Used    time.Time `json:"used"`

	rev uint64
}

// Cache is the stage cache on one connection.
type Cache struct {
	bucket
	index  jetstream.KeyValue
	limits CacheLimits
	now    func() time.Time
}

// OpenCache opens the cache buckets, which bus.Provision creates.
func OpenCache(ctx context.Context, js jetstream.JetStream, limits CacheLimits) (*Cache, error) {
	b, err := openBucket(ctx, js, subjects.CacheBucket)
	if err != nil {
		return nil, err
	}
	index, err := js.KeyValue(ctx, subjects.CacheIndexBucket)
	if err != nil {
		return nil, fmt.Errorf("kv %s: %w", subjects.CacheIndexBucket, err)
	}
	return &Cache{bucket: b, index: index, limits: limits.withDefaults(), now: time.Now}, nil
}

// Limits returns the cache's limits.
func (c *Cache) Limits() CacheLimits { return c.limits }

// indexKey is the index key of a repository's cache key: the repository's
// token and a hash of the key, which may hold any character.
func indexKey(repo, key string) string {
	sum := sha256.Sum256([]byte(key))
	return subjects.RepoToken(repo) + "." + hex.EncodeToString(sum[:20])
}

// Find returns the entry to restore for key: the entry of key itself
// (exact), or else the newest entry whose key starts with the first of
// restoreKeys that any entry's does. No entry is (nil, false, nil).
func (c *Cache) Find(ctx context.Context, repo, key string, restoreKeys []string) (e *CacheEntry, exact bool, err error) {
	e, err = c.get(ctx, repo, key)
	if err != nil || e != nil {
		return e, e != nil, err
	}
	if len(restoreKeys) == 0 {
		return nil, false, nil
	}
	entries, err := c.List(ctx, repo)
	if err != nil {
		return nil, false, err
	}
	for _, prefix := range restoreKeys {
		var newest *CacheEntry
		for i := range entries {
			if strings.HasPrefix(entries[i].Key, prefix) && (newest == nil || entries[i].Created.After(newest.Created)) {
				newest = &entries[i]
			}
		}
		if newest != nil {
			return newest, false, nil
		}
	}
	return nil, false, nil
}

// get returns the entry of a key, or nil.
func (c *Cache) get(ctx context.Context, repo, key string) (*CacheEntry, error) {
	kv, err := c.index.Get(ctx, indexKey(repo, key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cache key %s: %w", key, err)
	}
	e, err := decodeEntry(kv)
	if err != nil {
		return nil, err
	}
	return e, nil
}

func decodeEntry(kv jetstream.KeyValueEntry) (*CacheEntry, error) {
	var e CacheEntry
	if err := json.Unmarshal(kv.Value(), &e); err != nil {
		return nil, fmt.Errorf("cache index %s: %w", kv.Key(), err)
	}
	e.rev = kv.Revision()
	return &e, nil
}

// List returns a repository's entries, oldest first.
func (c *Cache) List(ctx context.Context, repo string) ([]CacheEntry, error) {
	w, err := c.index.Watch(ctx, subjects.RepoToken(repo)+".*", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("cache of %s: %w", repoLabel(repo), err)
	}
	defer w.Stop()
	var out []CacheEntry
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("cache of %s: %w", repoLabel(repo), ctx.Err())
		case kv, ok := <-w.Updates():
			if !ok {
				return nil, fmt.Errorf("cache of %s: watch ended", repoLabel(repo))
			}
			if kv == nil {
				slices.SortFunc(out, func(a, b CacheEntry) int { return a.Created.Compare(b.Created) })
				return out, nil
			}
			e, err := decodeEntry(kv)
			if err != nil {
				continue // not one of ours; never restored
			}
			out = append(out, *e)
		}
	}
}

func repoLabel(repo string) string { return cmp.Or(repo, "the local repository") }

// Open opens an entry's archive for reading and marks the entry used; a
// Read at the end returns ErrDigest when the bytes do not match the
// digest recorded. An entry whose archive is gone is removed and reported
// as ErrNotFound.
func (c *Cache) Open(ctx context.Context, e *CacheEntry) (io.ReadCloser, error) {
	rd, err := c.open(ctx, e.Object, "cache key "+e.Key, StallTimeout)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		_ = c.index.Delete(ctx, indexKey(e.Repo, e.Key), jetstream.LastRevision(e.rev))
		return nil, fmt.Errorf("cache key %s: archive %s: %w", e.Key, e.Object, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("cache key %s: %w", e.Key, err)
	}
	c.touch(ctx, e)
	return rd, nil
}

// touch records that e was used now, unless it was within touchEvery; a
// lost race with another toucher or saver changes nothing.
func (c *Cache) touch(ctx context.Context, e *CacheEntry) {
	now := c.now()
	if now.Sub(e.Used) < touchEvery {
		return
	}
	u := *e
	u.Used = now
	data, err := json.Marshal(u)
	if err != nil {
		return
	}
	if rev, err := c.index.Update(ctx, indexKey(e.Repo, e.Key), data, e.rev); err == nil {
		e.Used, e.rev = now, rev
	}
}

// SaveResult says what Save did.
type SaveResult struct {
	// Entry is the key's entry: the one saved, or the one that was there.
	Entry CacheEntry
	// Saved is false when the key had an entry already, or another saver
	// created it first.
	Saved bool
	// Evicted are the entries removed to keep the repository in its
	// quota.
	Evicted []CacheEntry
}

// Save stores r's bytes as the entry of a repository's key, unless the
// key has an entry (then nothing is read). An archive over the quota is
// refused with a *LimitError and leaves nothing stored. After a save the
// repository's unused and least recently used entries go (see Evict).
func (c *Cache) Save(ctx context.Context, repo, key, run, stage string, r io.Reader) (SaveResult, error) {
	if e, err := c.get(ctx, repo, key); err != nil || e != nil {
		if e != nil {
			return SaveResult{Entry: *e}, nil
		}
		return SaveResult{}, err
	}
	name := subjects.RepoToken(repo) + "/" + ulid.Make().String()
	lr := &limitedReader{r: r, left: c.limits.Quota}
	info, err := c.obs.Put(ctx, jetstream.ObjectMeta{Name: name}, lr)
	if lr.over {
		_ = c.obs.Delete(context.WithoutCancel(ctx), name)
		return SaveResult{}, &LimitError{What: "cache key " + key + ": its archive", Size: c.limits.Quota, AtLeast: true, Limit: c.limits.Quota, Scope: "per repository (the cache quota)"}
	}
	if err != nil {
		_ = c.obs.Delete(context.WithoutCancel(ctx), name)
		return SaveResult{}, fmt.Errorf("save cache key %s: %w", key, err)
	}
	sum, err := jetstream.DecodeObjectDigest(info.Digest)
	if err != nil {
		return SaveResult{}, fmt.Errorf("save cache key %s: digest %q: %w", key, info.Digest, err)
	}
	now := c.now()
	e := CacheEntry{Repo: repo, Key: key, Object: name, Size: int64(info.Size), SHA256: hex.EncodeToString(sum), Run: run, Stage: stage, Created: now, Used: now}
	data, err := json.Marshal(e)
	if err != nil {
		return SaveResult{}, err
	}
	rev, err := c.index.Create(ctx, indexKey(repo, key), data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		// Another saver of the key finished first: its entry stands.
		if derr := c.obs.Delete(context.WithoutCancel(ctx), name); derr != nil {
			return SaveResult{}, fmt.Errorf("save cache key %s: drop the copy another saver beat: %w", key, derr)
		}
		theirs, gerr := c.get(ctx, repo, key)
		if gerr != nil || theirs == nil {
			return SaveResult{}, cmp.Or(gerr, fmt.Errorf("save cache key %s: saved by another, then gone", key))
		}
		return SaveResult{Entry: *theirs}, nil
	}
	if err != nil {
		_ = c.obs.Delete(context.WithoutCancel(ctx), name)
		return SaveResult{}, fmt.Errorf("save cache key %s: index: %w", key, err)
	}
	e.rev = rev
	evicted, err := c.Evict(ctx, repo)
	return SaveResult{Entry: e, Saved: true, Evicted: evicted}, err
}

// Evict removes a repository's entries unused for MaxUnused, then the
// least recently used ones until the rest fit the quota, and returns
// them. An entry used or replaced meanwhile is left alone.
func (c *Cache) Evict(ctx context.Context, repo string) ([]CacheEntry, error) {
	entries, err := c.List(ctx, repo)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(entries, func(a, b CacheEntry) int { return a.Used.Compare(b.Used) })
	var total int64
	for _, e := range entries {
		total += e.Size
	}
	cutoff := c.now().Add(-c.limits.MaxUnused)
	var out []CacheEntry
	for _, e := range entries {
		if total <= c.limits.Quota && !e.Used.Before(cutoff) {
			break
		}
		if err := c.index.Delete(ctx, indexKey(e.Repo, e.Key), jetstream.LastRevision(e.rev)); err != nil {
			continue // used or replaced since it was listed
		}
		if err := c.obs.Delete(ctx, e.Object); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return out, fmt.Errorf("evict cache key %s: %w", e.Key, err)
		}
		total -= e.Size
		out = append(out, e)
	}
	return out, nil
}

// Describe says what an entry is, for a stage's log.
func (e *CacheEntry) Describe() string {
	return fmt.Sprintf("%s (%s, saved %s by run %s stage %s)", e.Key, bytesize.Format(e.Size), e.Created.UTC().Format(time.RFC3339), e.Run, e.Stage)
}
