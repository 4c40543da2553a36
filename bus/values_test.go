package bus_test

import (
	"context"
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/weft-ci/weft/bus"
	"github.com/weft-ci/weft/test"
)

// Values gives each key's last value once, leaves deleted keys out, and
// stops at the bucket as it was although writes go on while it reads.
func TestValuesReadsTheBucketAsItWas(t *testing.T) {
	b := test.Bus(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := b.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "values_test"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{}
	for i := range 2500 {
		k := fmt.Sprintf("k%04d", i%1200)
		v := fmt.Sprintf("v%d", i)
		if _, err := kv.PutString(ctx, k, v); err != nil {
			t.Fatal(err)
		}
		want[k] = v
	}
	if err := kv.Delete(ctx, "k0007"); err != nil {
		t.Fatal(err)
	}
	delete(want, "k0007")
	got := map[string]string{}
	err = bus.Values(ctx, b.JS, "values_test", func(k string, v []byte) error {
		if _, ok := got[k]; ok {
			t.Errorf("key %s came twice", k)
		}
		got[k] = string(v)
		if len(got) == 1 {
			for i := range 300 { // written while it reads: not waited for
				if _, err := kv.PutString(ctx, fmt.Sprintf("new%03d", i), "x"); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) {
		t.Fatalf("Values gave %d keys, want %d (k0007 deleted: %v)", len(got), len(want), got["k0007"])
	}
}
