package boltstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// revokeLike is one write shaped like a Revoke: a record and its audit
// entry in one transaction.
func revokeLike(ctx context.Context, d *store.DB, i int) (uint64, error) {
	name := fmt.Sprintf("r-%016x", uint64(i)*0x9e3779b97f4a7c15)
	return d.Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: name, Value: make([]byte, 300)}},
		store.AuditEntry{Actor: "spiffe://example.org/mandate/operator", Action: "revocation.create",
			Object: "revocation/" + name, Detail: "subject spiffe://example.org/agent/x until 2026-12-02T05:00:00Z"})
}

// TestFileGrowsInSteps: 500 revocation writes on a fresh file change its
// size at most twice (the first growth to bbolt's 16 MiB step, and
// perhaps one more), not at every doubling of a small mapping (each a
// truncate, a full fsync and a remap in the applier's commit: five of
// them with the default mapping).
func TestFileGrowsInSteps(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := open(t, dir)
	defer d.Close()
	var sizes []int64
	for i := range 500 {
		if _, err := revokeLike(ctx, d, i); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(filepath.Join(dir, FileName))
		if err != nil {
			t.Fatal(err)
		}
		if len(sizes) == 0 || sizes[len(sizes)-1] != fi.Size() {
			sizes = append(sizes, fi.Size())
		}
	}
	if len(sizes) > 2 {
		t.Fatalf("the file changed size %d times in 500 writes: %v", len(sizes)-1, sizes)
	}
}

func backendIn(t *testing.T, dir string) *Backend {
	t.Helper()
	be, err := OpenBackend(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = be.Close() })
	return be
}

// appends is the number of frames the backend wrote to its log.
func appends(be *Backend) int {
	be.wmu.Lock()
	defer be.wmu.Unlock()
	return be.appends
}

// TestUpdateWithoutWritesDoesNotCommit: an Update whose function writes
// nothing (or fails) writes nothing to the log (no sync) and returns the
// current revision; one that writes appends one frame.
func TestUpdateWithoutWritesDoesNotCommit(t *testing.T) {
	ctx := context.Background()
	be := backendIn(t, t.TempDir())
	rev, err := be.Update(ctx, func(tx store.Tx) error { return tx.Put("t", "k", []byte("v")) })
	if err != nil {
		t.Fatal(err)
	}
	n := appends(be)
	got, err := be.Update(ctx, func(tx store.Tx) error {
		_, _, err := tx.Get("t", "k")
		return err
	})
	if err != nil || got != rev {
		t.Fatalf("read-only update: revision %d, %v; want %d", got, err, rev)
	}
	if _, err := be.Update(ctx, func(tx store.Tx) error {
		if err := tx.Put("t", "k2", []byte("v")); err != nil {
			return err
		}
		return store.ErrConflict
	}); err != store.ErrConflict {
		t.Fatalf("failing update: %v", err)
	}
	if now := appends(be); now != n {
		t.Fatalf("%d frames logged for updates that wrote nothing", now-n)
	}
	if err := be.View(ctx, func(tx store.Tx) error {
		if _, ok, _ := tx.Get("t", "k2"); ok {
			return fmt.Errorf("the failed update's write is visible")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, err := be.Update(ctx, func(tx store.Tx) error { return tx.Put("t", "k3", nil) }); err != nil || got != rev+1 || appends(be) != n+1 {
		t.Fatalf("a write after them: revision %d (%v), %d frames; want %d, 1", got, err, appends(be)-n, rev+1)
	}
}

// TestPanicInUpdateRollsBack: a function that panics leaves nothing
// written and the file usable (the write lock released).
func TestPanicInUpdateRollsBack(t *testing.T) {
	ctx := context.Background()
	be := backendIn(t, t.TempDir())
	func() {
		defer func() { _ = recover() }()
		_, _ = be.Update(ctx, func(tx store.Tx) error {
			_ = tx.Put("t", "lost", []byte("v"))
			panic("boom")
		})
	}()
	done := make(chan error, 1)
	go func() {
		_, err := be.Update(ctx, func(tx store.Tx) error { return tx.Put("t", "after", []byte("v")) })
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a write after the panic is still waiting: the write lock was left held")
	}
	var keys []string
	_ = be.View(ctx, func(tx store.Tx) error {
		return tx.Scan("t", "", func(k string, _ []byte) (bool, error) { keys = append(keys, k); return true, nil })
	})
	if !slices.Equal(keys, []string{"after"}) {
		t.Fatalf("keys after a panicking update: %v", keys)
	}
}

// BenchmarkRevokeCommit is one Revoke's store write on a fresh file (a
// record and its audit entry in one synced transaction), the floor of the
// Revoke RPC: p50 and p99 of the commits. Each commit is one frame of
// the write-ahead log and one fdatasync, so read it against the disk's
// fdatasync latency.
func BenchmarkRevokeCommit(b *testing.B) {
	ctx := context.Background()
	d := open(b, b.TempDir())
	defer d.Close()
	lat := make([]time.Duration, 0, b.N)
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		if _, err := revokeLike(ctx, d, i); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.5), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}
