package objectstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
)

// openBus opens a bus on an embedded server of the test's own, with
// weft's streams and buckets.
func openBus(t *testing.T) (*bus.Bus, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	// package test starts whole stacks, whose agents import this package:
	// the bus is opened here.
	b, err := bus.Open(ctx, bus.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	if err := bus.Provision(ctx, b.JS, 0); err != nil {
		t.Fatal(err)
	}
	return b, ctx
}

func openCache(t *testing.T, limits CacheLimits) (*Cache, context.Context) {
	t.Helper()
	b, ctx := openBus(t)
	c, err := OpenCache(ctx, b.JS, limits)
	if err != nil {
		t.Fatal(err)
	}
	return c, ctx
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func readEntry(t *testing.T, ctx context.Context, c *Cache, e *CacheEntry) []byte {
	t.Helper()
	r, err := c.Open(ctx, e)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read cache key %s: %v", e.Key, err)
	}
	return got
}

// objects counts the archives the cache bucket holds.
func objects(t *testing.T, ctx context.Context, c *Cache) int {
	t.Helper()
	list, err := c.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return len(list)
}

// A saved key restores its bytes; saving it again stores nothing and
// reads nothing of what it is given.
func TestACacheKeyIsSavedOnce(t *testing.T) {
	c, ctx := openCache(t, CacheLimits{})
	data := randomBytes(t, 300<<10)
	res, err := c.Save(ctx, "acme/api", "go-1", "01RUN", "build", bytes.NewReader(data))
	if err != nil || !res.Saved {
		t.Fatalf("first save = %+v, %v; want saved", res, err)
	}
	e, exact, err := c.Find(ctx, "acme/api", "go-1", nil)
	if err != nil || e == nil || !exact {
		t.Fatalf("Find = %+v, %v, %v; want the exact entry", e, exact, err)
	}
	if got := readEntry(t, ctx, c, e); !bytes.Equal(got, data) {
		t.Fatalf("restored %d bytes, not the %d saved", len(got), len(data))
	}
	unread := strings.NewReader("other bytes")
	res, err = c.Save(ctx, "acme/api", "go-1", "01RUN2", "build", unread)
	if err != nil || res.Saved || res.Entry.Run != "01RUN" {
		t.Fatalf("second save = %+v, %v; want not saved, the first run's entry", res, err)
	}
	if unread.Len() != len("other bytes") {
		t.Errorf("a save of an existing key read %d bytes of its archive", len("other bytes")-unread.Len())
	}
	if e, _, _ := c.Find(ctx, "acme/web", "go-1", nil); e != nil {
		t.Errorf("another repository's key found: %+v", e)
	}
	if n := objects(t, ctx, c); n != 1 {
		t.Errorf("%d archives stored, want 1", n)
	}
}

// Two savers of one key at once: one entry, intact, and the loser's
// upload removed.
func TestConcurrentSaversOfAKeyLeaveOneIntactEntry(t *testing.T) {
	c, ctx := openCache(t, CacheLimits{})
	contents := [][]byte{randomBytes(t, 1<<20+5), randomBytes(t, 1<<20+7)}
	var (
		wg      sync.WaitGroup
		results = make([]SaveResult, 2)
		errs    = make([]error, 2)
		writers = make([]*io.PipeWriter, 2)
	)
	for i := range 2 {
		pr, pw := io.Pipe()
		writers[i] = pw
		wg.Go(func() { results[i], errs[i] = c.Save(ctx, "", "npm-abc", "01RUN", "install", pr) })
	}
	// Both savers are past their existence check once each has read from
	// its pipe: only then are the archives written, so neither could see
	// the other's entry before it uploaded.
	for i := range 2 {
		if _, err := writers[i].Write(contents[i][:1]); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		go func() {
			_, err := writers[i].Write(contents[i][1:])
			writers[i].CloseWithError(err)
		}()
	}
	wg.Wait()
	saved := 0
	for i := range 2 {
		if errs[i] != nil {
			t.Fatalf("saver %d: %v", i, errs[i])
		}
		if results[i].Saved {
			saved++
		}
	}
	if saved != 1 {
		t.Fatalf("%d savers saved, want exactly 1: %+v", saved, results)
	}
	e, _, err := c.Find(ctx, "", "npm-abc", nil)
	if err != nil || e == nil {
		t.Fatalf("Find = %v, %v", e, err)
	}
	got := readEntry(t, ctx, c, e)
	if !bytes.Equal(got, contents[0]) && !bytes.Equal(got, contents[1]) {
		t.Fatalf("the entry (%d bytes) is neither saver's archive", len(got))
	}
	if n := objects(t, ctx, c); n != 1 {
		t.Errorf("%d archives left, want 1 (the loser's removed)", n)
	}
}

// A restore key restores the newest entry whose key it prefixes, trying
// restore keys in order.
func TestARestoreKeyMatchesTheNewestEntryWithItsPrefix(t *testing.T) {
	c, ctx := openCache(t, CacheLimits{})
	clock := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	c.now = func() time.Time { return clock }
	for _, key := range []string{"go-linux-aaa", "go-linux-bbb", "node-ccc", "go-darwin-ddd"} {
		clock = clock.Add(time.Minute)
		if _, err := c.Save(ctx, "acme/api", key, "01RUN", "build", strings.NewReader(key)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		key     string
		restore []string
		want    string
	}{
		{"go-linux-zzz", []string{"go-linux-"}, "go-linux-bbb"},
		{"go-linux-zzz", []string{"go-"}, "go-darwin-ddd"},
		{"py-1", []string{"py-", "go-linux-", "go-"}, "go-linux-bbb"},
		{"node-ccc", []string{"go-"}, "node-ccc"},
		{"py-1", []string{"py-"}, ""},
	}
	for _, tt := range tests {
		e, exact, err := c.Find(ctx, "acme/api", tt.key, tt.restore)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if e != nil {
			got = e.Key
			if content := readEntry(t, ctx, c, e); string(content) != e.Key {
				t.Errorf("entry %s holds %q", e.Key, content)
			}
		}
		if got != tt.want || exact != (tt.want == tt.key) {
			t.Errorf("Find(%q, %q) = %q (exact %v), want %q", tt.key, tt.restore, got, exact, tt.want)
		}
	}
}

// Over the quota the least recently used entries go, and so do entries
// unused for MaxUnused; an archive over the quota is refused.
func TestTheCacheEvictsTheLeastRecentlyUsed(t *testing.T) {
	c, ctx := openCache(t, CacheLimits{Quota: 3 << 10, MaxUnused: 24 * time.Hour})
	clock := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	c.now = func() time.Time { return clock }
	save := func(key string) SaveResult {
		t.Helper()
		clock = clock.Add(time.Hour)
		res, err := c.Save(ctx, "r", key, "01RUN", "s", bytes.NewReader(make([]byte, 1<<10)))
		if err != nil || !res.Saved {
			t.Fatalf("save %s = %+v, %v", key, res, err)
		}
		return res
	}
	keys := func() []string {
		t.Helper()
		list, err := c.List(ctx, "r")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range list {
			out = append(out, e.Key)
		}
		return out
	}
	save("a")
	save("b")
	save("c")
	clock = clock.Add(time.Hour)
	a, _, err := c.Find(ctx, "r", "a", nil)
	if err != nil || a == nil {
		t.Fatal(a, err)
	}
	readEntry(t, ctx, c, a) // a is now the most recently used
	if res := save("d"); len(res.Evicted) != 1 || res.Evicted[0].Key != "b" {
		t.Fatalf("saving d over the quota evicted %+v, want b", res.Evicted)
	}
	if got := strings.Join(keys(), ","); got != "a,c,d" {
		t.Fatalf("entries %s, want a,c,d", got)
	}
	if n := objects(t, ctx, c); n != 3 {
		t.Errorf("%d archives, want 3", n)
	}
	clock = clock.Add(23 * time.Hour) // c was last used 25 h ago, a 24 h
	if res := save("e"); len(res.Evicted) != 2 {
		t.Fatalf("evicted %+v, want a and c (unused for a day)", res.Evicted)
	}
	if got := strings.Join(keys(), ","); got != "d,e" {
		t.Fatalf("entries %s, want d,e", got)
	}

	_, err = c.Save(ctx, "r", "big", "01RUN", "s", bytes.NewReader(make([]byte, 4<<10)))
	var le *LimitError
	if !errors.As(err, &le) || !strings.Contains(err.Error(), "limit of 3 KiB per repository") {
		t.Fatalf("an archive over the quota: %v, want a limit error naming the quota", err)
	}
	if e, _, _ := c.Find(ctx, "r", "big", nil); e != nil {
		t.Errorf("the refused archive has an entry: %+v", e)
	}
	if n := objects(t, ctx, c); n != 2 {
		t.Errorf("%d archives after the refusal, want 2", n)
	}
}

// An entry whose archive has gone (past the bucket's MaxAge) is a miss,
// and its index entry goes with it.
func TestAnEntryWithoutItsArchiveIsAMiss(t *testing.T) {
	c, ctx := openCache(t, CacheLimits{})
	if _, err := c.Save(ctx, "r", "k", "01RUN", "s", strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	e, _, err := c.Find(ctx, "r", "k", nil)
	if err != nil || e == nil {
		t.Fatal(e, err)
	}
	if err := c.obs.Delete(ctx, e.Object); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Open(ctx, e); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Open of an entry without its archive: %v, want ErrNotFound", err)
	}
	if e, _, err := c.Find(ctx, "r", "k", nil); err != nil || e != nil {
		t.Fatalf("after the miss Find = %+v, %v; want no entry", e, err)
	}
	if _, err := c.index.Get(ctx, indexKey("r", "k")); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("index entry left: %v", err)
	}
}
