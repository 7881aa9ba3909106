package storetest

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/cp/store"
)

// testDriftCounts: counts read back as written until they expire, are
// deleted by a nil value, swept once expired, and bad writes are
// refused.
func testDriftCounts(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	long := "rule\x00subject\x00spiffe://example.org/" + strings.Repeat("a", 2000)
	now := clk.Now()
	if err := d.PutDriftCounts(ctx, []store.DriftCount{
		{Key: "rule\x00task\x00t1", Value: []byte("three"), Expires: now.Add(time.Minute)},
		{Key: long, Value: []byte("one"), Expires: now.Add(time.Hour)},
		{Key: "rule\x00task\x00stale", Value: []byte("x"), Expires: now}, // expired already: not written
	}); err != nil {
		t.Fatal(err)
	}
	got, err := d.DriftCounts(ctx, []string{"rule\x00task\x00t1", long, "rule\x00task\x00stale", "absent"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got["rule\x00task\x00t1"]) != "three" || string(got[long]) != "one" {
		t.Fatalf("read %q", got)
	}
	// Overwrite, then expire: t1 reads as absent once past its expiry,
	// and the sweep removes it (and only it).
	if err := d.PutDriftCounts(ctx, []store.DriftCount{{Key: "rule\x00task\x00t1", Value: []byte("four"), Expires: now.Add(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Minute)
	got, err = d.DriftCounts(ctx, []string{"rule\x00task\x00t1", long})
	if err != nil || len(got) != 1 || string(got[long]) != "one" {
		t.Fatalf("after t1 expired: %q, %v", got, err)
	}
	res, err := d.SweepExpired(ctx)
	if err != nil || res.DriftCounts != 1 {
		t.Fatalf("sweep: %+v, %v; want one drift count removed", res, err)
	}
	// A nil value deletes.
	if err := d.PutDriftCounts(ctx, []store.DriftCount{{Key: long}}); err != nil {
		t.Fatal(err)
	}
	if got, err := d.DriftCounts(ctx, []string{long}); err != nil || len(got) != 0 {
		t.Fatalf("after delete: %q, %v", got, err)
	}
	if res, err := d.SweepExpired(ctx); err != nil || res.DriftCounts != 0 {
		t.Fatalf("second sweep: %+v, %v", res, err)
	}
	for name, err := range map[string]error{
		"empty key":   d.PutDriftCounts(ctx, []store.DriftCount{{Key: "", Value: []byte("x"), Expires: clk.Now().Add(time.Minute)}}),
		"long key":    d.PutDriftCounts(ctx, []store.DriftCount{{Key: strings.Repeat("k", 5000), Value: []byte("x"), Expires: clk.Now().Add(time.Minute)}}),
		"large value": d.PutDriftCounts(ctx, []store.DriftCount{{Key: "k", Value: make([]byte, store.MaxDriftCount+1), Expires: clk.Now().Add(time.Minute)}}),
		"large read":  func() error { _, err := d.DriftCounts(ctx, make([]string, store.MaxDriftCountBatch+1)); return err }(),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
