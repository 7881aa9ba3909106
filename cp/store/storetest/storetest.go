// Package storetest is the conformance suite of store backends: every
// backend (bbolt, etcd, the in-memory fake) runs Run and must pass it
// unchanged.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/cp/store"
)

// NewBackend returns a fresh, empty backend; the suite closes it.
type NewBackend func(t *testing.T) store.Backend

// Clock is a settable clock for the suite.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// Now returns the clock's time.
func (c *Clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// Advance moves the clock by d (back when negative).
func (c *Clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func open(t *testing.T, nb NewBackend, opts ...store.Option) (*store.DB, store.Backend, *Clock) {
	t.Helper()
	clk := &Clock{t: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
	be := nb(t)
	d, err := store.New(be, append([]store.Option{store.WithClock(clk.Now)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d, be, clk
}

// Run runs every conformance test against backends from nb.
func Run(t *testing.T, nb NewBackend) {
	tests := []struct {
		name string
		fn   func(*testing.T, NewBackend)
	}{
		{"Resources", testResources},
		{"VersionsAreGlobal", testVersionsGlobal},
		{"FailedWriteChangesNothing", testFailedWrite},
		{"Replace", testReplace},
		{"UpdatePutsAndDeletesAtOnce", testUpdate},
		{"BadInput", testBadInput},
		{"AuditLog", testAuditLog},
		{"AuditClockStepsBack", testAuditClockBack},
		{"AuditNewest", testAuditNewest},
		{"AuditRetention", testAuditRetention},
		{"SigningKeys", testSigningKeys},
		{"SigningKeysSealed", testSigningKeysSealed},
		{"TaskOwners", testTaskOwners},
		{"PendingQuota", testPendingQuota},
		{"ApprovalUses", testApprovalUses},
		{"ApprovalUsesConcurrent", testApprovalUsesConcurrent},
		{"Import", testImport},
		{"DriftQueue", testDriftQueue},
		{"DriftCounts", testDriftCounts},
		{"Follow", testFollow},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, nb) })
	}
}

const (
	typeA = "type.googleapis.com/mandate.v1.Policy"
	typeB = "type.googleapis.com/mandate.v1.Revocation"
	actor = "spiffe://example.org/user/ops"
)

func items(kv ...string) []store.Item {
	var out []store.Item
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, store.Item{Name: kv[i], Value: []byte(kv[i+1])})
	}
	return out
}

func mustList(t *testing.T, d *store.DB, typeURL string) ([]store.Item, uint64) {
	t.Helper()
	got, v, err := d.List(context.Background(), typeURL)
	if err != nil {
		t.Fatal(err)
	}
	return got, v
}

func sameItems(t *testing.T, got, want []store.Item) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("items %v, want %v", got, want)
	}
	for i := range got {
		if got[i].Name != want[i].Name || !bytes.Equal(got[i].Value, want[i].Value) {
			t.Fatalf("items %v, want %v", got, want)
		}
	}
}

func testResources(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, _ := open(t, nb)
	if got, v := mustList(t, d, typeA); len(got) != 0 || v != 0 {
		t.Fatalf("empty store: %v at version %d", got, v)
	}
	v1, err := d.Put(ctx, typeA, items("b", "2", "a", "1"), store.AuditEntry{Actor: actor, Action: "put", Object: "a,b"})
	if err != nil {
		t.Fatal(err)
	}
	got, v := mustList(t, d, typeA)
	sameItems(t, got, items("a", "1", "b", "2"))
	if v != v1 || v1 == 0 {
		t.Fatalf("list version %d, put returned %d", v, v1)
	}
	v2, err := d.Put(ctx, typeA, items("a", "1"))
	if err != nil {
		t.Fatal(err)
	}
	if v2 <= v1 {
		t.Fatalf("a write kept or lowered the version: %d then %d", v1, v2)
	}
	v3, err := d.Delete(ctx, typeA, []string{"b"})
	if err != nil {
		t.Fatal(err)
	}
	got, v = mustList(t, d, typeA)
	sameItems(t, got, items("a", "1"))
	if v3 <= v2 || v != v3 {
		t.Fatalf("delete: version %d after %d, list says %d", v3, v2, v)
	}
	if vv, err := d.Version(ctx, typeA); err != nil || vv != v3 {
		t.Fatalf("Version = %d, %v; want %d", vv, err, v3)
	}
	log, err := d.AuditLog(ctx, time.Time{}, 0)
	if err != nil || len(log) != 1 || log[0].Action != "put" || log[0].Seq == 0 {
		t.Fatalf("audit of the put: %+v, %v", log, err)
	}
}

func testVersionsGlobal(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, _ := open(t, nb)
	seen := map[uint64]bool{}
	var last uint64
	for i := range 6 {
		typ := typeA
		if i%2 == 1 {
			typ = typeB
		}
		v, err := d.Put(ctx, typ, items(fmt.Sprint("n", i), "x"))
		if err != nil {
			t.Fatal(err)
		}
		if v <= last || seen[v] {
			t.Fatalf("write %d got version %d after %d: versions must rise across types", i, v, last)
		}
		seen[v], last = true, v
	}
	_, va := mustList(t, d, typeA)
	_, vb := mustList(t, d, typeB)
	if vb != last || va >= vb {
		t.Fatalf("type versions %d, %d; the last write was %d to the second type", va, vb, last)
	}
}

func testFailedWrite(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, _ := open(t, nb)
	v0, err := d.Put(ctx, typeA, items("a", "1", "b", "2"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Delete(ctx, typeA, []string{"a", "missing"}, store.AuditEntry{Actor: actor, Action: "delete"})
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete of a missing name: %v, want ErrNotFound", err)
	}
	got, v := mustList(t, d, typeA)
	sameItems(t, got, items("a", "1", "b", "2"))
	if v != v0 {
		t.Fatalf("a failed write moved the version from %d to %d", v0, v)
	}
	if log, _ := d.AuditLog(ctx, time.Time{}, 0); len(log) != 0 {
		t.Fatalf("a failed write left audit entries: %+v", log)
	}
	if err := d.DeleteSigningKey(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete of a missing signing key: %v", err)
	}
}

func testReplace(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, _ := open(t, nb)
	if _, err := d.Put(ctx, typeA, items("a", "1", "b", "2", "c", "3")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Put(ctx, typeB, items("x", "9")); err != nil {
		t.Fatal(err)
	}
	_, base := mustList(t, d, typeA)
	if _, err := d.Put(ctx, typeA, items("e", "5")); err != nil { // another writer, after base
		t.Fatal(err)
	}
	if _, err := d.Replace(ctx, typeA, base, items("b", "20", "d", "4")); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("replace planned on version %d after a later write: %v, want ErrConflict", base, err)
	}
	got, base := mustList(t, d, typeA)
	sameItems(t, got, items("a", "1", "b", "2", "c", "3", "e", "5"))
	v, err := d.Replace(ctx, typeA, base, items("b", "20", "d", "4"))
	if err != nil {
		t.Fatal(err)
	}
	got, lv := mustList(t, d, typeA)
	sameItems(t, got, items("b", "20", "d", "4"))
	if lv != v {
		t.Fatalf("list version %d, replace returned %d", lv, v)
	}
	other, _ := mustList(t, d, typeB)
	sameItems(t, other, items("x", "9"))
	v2, err := d.Replace(ctx, typeA, v, nil)
	if err != nil || v2 <= v {
		t.Fatalf("replace with nothing: version %d after %d, %v", v2, v, err)
	}
	if got, _ := mustList(t, d, typeA); len(got) != 0 {
		t.Fatalf("left %v", got)
	}
	v3, err := d.Replace(ctx, typeA, v2, nil)
	if err != nil || v3 <= v2 {
		t.Fatalf("replace of an empty set: version %d after %d, %v (every write raises the version)", v3, v2, err)
	}
}

func testBadInput(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, _ := open(t, nb)
	for name, f := range map[string]func() error{
		"empty type":     func() error { _, err := d.Put(ctx, "", items("a", "1")); return err },
		"empty name":     func() error { _, err := d.Put(ctx, typeA, items("", "1")); return err },
		"duplicate name": func() error { _, err := d.Put(ctx, typeA, items("a", "1", "a", "2")); return err },
		"empty put":      func() error { _, err := d.Put(ctx, typeA, nil); return err },
		"empty delete":   func() error { _, err := d.Delete(ctx, typeA, nil); return err },
		"audit without action": func() error {
			_, err := d.Put(ctx, typeA, items("a", "1"), store.AuditEntry{Actor: actor})
			return err
		},
		"signing key without id": func() error { return d.PutSigningKey(ctx, store.SigningKey{}) },
		"task without owner":     func() error { _, err := d.ClaimTask(ctx, store.TaskOwner{Task: "t"}); return err },
		"pending without expiry": func() error {
			return d.PutPending(ctx, store.PendingApproval{ID: "p", Subject: "s"}, 1)
		},
		"use with zero max": func() error { _, err := d.ClaimApprovalUse(ctx, "a", 0, time.Now().Add(time.Hour)); return err },
	} {
		if f() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if got, v := mustList(t, d, typeA); len(got) != 0 || v != 0 {
		t.Fatalf("refused writes stored %v at %d", got, v)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := d.Put(cctx, typeA, items("a", "1")); !errors.Is(err, context.Canceled) {
		t.Fatalf("put with a cancelled context: %v", err)
	}
}

func testAuditLog(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	start := clk.Now()
	for i := range 10 {
		var err error
		if i%3 == 0 {
			// two entries committed with one write
			_, err = d.Put(ctx, typeA, items(fmt.Sprint(i), "x"),
				store.AuditEntry{Actor: actor, Action: "put", Object: fmt.Sprint(i)},
				store.AuditEntry{Actor: actor, Action: "put.more", Object: fmt.Sprint(i)})
		} else {
			err = d.AppendAudit(ctx, store.AuditEntry{Actor: actor, Action: "act", Object: fmt.Sprint(i)})
		}
		if err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Minute)
	}
	all, err := d.AuditLog(ctx, time.Time{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 14 {
		t.Fatalf("%d entries, want 14", len(all))
	}
	for i, e := range all {
		if i > 0 && e.Seq <= all[i-1].Seq {
			t.Fatalf("sequence not increasing: %+v", all)
		}
		if e.Time.IsZero() || e.Time.Location() != time.UTC {
			t.Fatalf("entry %d time %v: want the store's clock, in UTC", i, e.Time)
		}
	}
	since := start.Add(5 * time.Minute)
	got, err := d.AuditLog(ctx, since, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, e := range all {
		if !e.Time.Before(since) {
			want++
		}
	}
	if len(got) != want || want == 0 || got[0].Time.Before(since) {
		t.Fatalf("since %v: %d entries, want %d", since, len(got), want)
	}
	if got, _ := d.AuditLog(ctx, since, 2); len(got) != 2 {
		t.Fatalf("limit 2: %d entries", len(got))
	}
	if got, _ := d.AuditLog(ctx, clk.Now().Add(time.Hour), 0); len(got) != 0 {
		t.Fatalf("since the future: %d entries", len(got))
	}
	if err := d.AppendAudit(ctx); err == nil {
		t.Fatal("empty append accepted")
	}
}

func testAuditClockBack(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	t0 := clk.Now()
	times := []time.Duration{0, 10 * time.Minute, 2 * time.Minute, 11 * time.Minute, 3 * time.Minute}
	for i, off := range times {
		if err := d.AppendAudit(ctx, store.AuditEntry{Time: t0.Add(off), Actor: actor, Action: "a", Object: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, since := range []time.Duration{0, time.Minute, 2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 11 * time.Minute, 12 * time.Minute} {
		got, err := d.AuditLog(ctx, t0.Add(since), 0)
		if err != nil {
			t.Fatal(err)
		}
		var want []string
		for i, off := range times {
			if off >= since {
				want = append(want, fmt.Sprint(i))
			}
		}
		var objs []string
		for _, e := range got {
			objs = append(objs, e.Object)
		}
		if !slices.Equal(objs, want) {
			t.Errorf("since +%v: %v, want %v", since, objs, want)
		}
	}
}

// testAuditNewest checks AuditNewest against the last entries of the
// whole trail, on blocks of 1 to 40 entries, a clock that steps back, and
// a pruned start.
func testAuditNewest(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	t0 := clk.Now()
	n := 0
	for i := range 60 {
		size := []int{1, 1, 2, 40, 1, 3}[i%6]
		block := make([]store.AuditEntry, size)
		for j := range block {
			off := time.Duration(n) * time.Second
			if n%17 == 5 {
				off -= 30 * time.Second // a clock stepped back
			}
			block[j] = store.AuditEntry{Time: t0.Add(off), Actor: actor, Action: "a", Object: fmt.Sprint(n)}
			n++
		}
		if err := d.AppendAudit(ctx, block...); err != nil {
			t.Fatal(err)
		}
	}
	check := func(stage string) {
		t.Helper()
		for _, since := range []time.Duration{-time.Hour, 0, 100 * time.Second, 500 * time.Second, time.Duration(n-3) * time.Second, time.Hour} {
			all, err := d.AuditLog(ctx, t0.Add(since), 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			for _, limit := range []int{1, 2, 7, 39, 41, 100, 1000} {
				got, err := d.AuditNewest(ctx, t0.Add(since), limit)
				if err != nil {
					t.Fatal(err)
				}
				want := all
				if len(want) > limit {
					want = want[len(want)-limit:]
				}
				if !slices.EqualFunc(got, want, func(a, b store.AuditEntry) bool { return a.Seq == b.Seq }) {
					t.Fatalf("%s: since +%v limit %d: %d entries from seq %v, want %d from %v", stage, since, limit,
						len(got), firstSeq(got), len(want), firstSeq(want))
				}
			}
		}
	}
	check("whole trail")
	clk.Advance(time.Duration(n)*time.Second - 200*time.Second)
	if _, err := d.PruneAudit(ctx, store.AuditRetention{MaxEntries: uint64(n / 3)}); err != nil {
		t.Fatal(err)
	}
	check("pruned")
}

func firstSeq(es []store.AuditEntry) any {
	if len(es) == 0 {
		return "none"
	}
	return es[0].Seq
}

func testAuditRetention(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	for i := range 700 {
		e := store.AuditEntry{Actor: actor, Action: "a", Object: fmt.Sprint(i)}
		if i%100 == 0 {
			if _, err := d.Put(ctx, typeA, items(fmt.Sprint(i), "x"), e, e); err != nil {
				t.Fatal(err)
			}
		} else if err := d.AppendAudit(ctx, e); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Second)
	}
	all, _ := d.AuditLog(ctx, time.Time{}, 1<<20)
	if len(all) != 707 {
		t.Fatalf("%d entries, want 707", len(all))
	}
	n, err := d.PruneAudit(ctx, store.AuditRetention{MaxEntries: 650})
	if err != nil || n != 57 {
		t.Fatalf("prune to 650: removed %d, %v; want 57", n, err)
	}
	left, _ := d.AuditLog(ctx, time.Time{}, 1<<20)
	if len(left) != 650 || left[0].Seq != all[57].Seq || left[649].Seq != all[706].Seq {
		t.Fatalf("after count prune: %d entries from seq %d", len(left), left[0].Seq)
	}
	// By age: entries older than 100s go.
	n, err = d.PruneAudit(ctx, store.AuditRetention{MaxAge: 100 * time.Second})
	cutoff := clk.Now().Add(-100 * time.Second)
	want := 0
	for _, e := range left {
		if e.Time.Before(cutoff) {
			want++
		}
	}
	if err != nil || n != want {
		t.Fatalf("age prune removed %d, %v; want %d", n, err, want)
	}
	left2, _ := d.AuditLog(ctx, time.Time{}, 1<<20)
	if len(left2) != 650-want || left2[0].Time.Before(cutoff) {
		t.Fatalf("after age prune: %d entries, first at %v (cutoff %v)", len(left2), left2[0].Time, cutoff)
	}
	// Seeking still works after pruning, and appends continue the sequence.
	mid := left2[len(left2)/2].Time
	got, _ := d.AuditLog(ctx, mid, 0)
	if len(got) == 0 || got[0].Time.Before(mid) || got[len(got)-1].Seq != left2[len(left2)-1].Seq {
		t.Fatalf("seek after prune: %d entries", len(got))
	}
	if err := d.AppendAudit(ctx, store.AuditEntry{Actor: actor, Action: "after"}); err != nil {
		t.Fatal(err)
	}
	last, _ := d.AuditLog(ctx, clk.Now(), 0)
	if len(last) != 1 || last[0].Seq != all[706].Seq+1 {
		t.Fatalf("append after prune: %+v", last)
	}
	if n, err := d.PruneAudit(ctx, store.AuditRetention{MaxEntries: 1 << 30}); n != 0 || err != nil {
		t.Fatalf("prune within bounds removed %d, %v", n, err)
	}
}

func testSigningKeys(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	k1 := store.SigningKey{ID: "k1", Algorithm: "EdDSA", Private: bytes.Repeat([]byte{1}, 64), CreatedAt: clk.Now().UTC()}
	k2 := store.SigningKey{ID: "k2", Algorithm: "EdDSA", Private: bytes.Repeat([]byte{2}, 64), CreatedAt: clk.Now().UTC(), NotAfter: clk.Now().Add(time.Hour).UTC()}
	for _, k := range []store.SigningKey{k2, k1} {
		if err := d.PutSigningKey(ctx, k, store.AuditEntry{Actor: actor, Action: "signing-key.create", Object: k.ID}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := d.SigningKeys(ctx)
	if err != nil || len(got) != 2 || got[0].ID != "k1" || !bytes.Equal(got[1].Private, k2.Private) || !got[1].NotAfter.Equal(k2.NotAfter) {
		t.Fatalf("signing keys %+v, %v", got, err)
	}
	if err := d.DeleteSigningKey(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.SigningKeys(ctx); len(got) != 1 || got[0].ID != "k2" {
		t.Fatalf("after delete: %+v", got)
	}
}

func kek(id string, b byte) store.KEK { return store.KEK{ID: id, Key: bytes.Repeat([]byte{b}, 32)} }

func testSigningKeysSealed(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, be, clk := open(t, nb, store.WithKeyEncryption(kek("kek1", 7)))
	priv := bytes.Repeat([]byte{0xAB}, 64)
	if err := d.PutSigningKey(ctx, store.SigningKey{ID: "k1", Algorithm: "EdDSA", Private: priv, CreatedAt: clk.Now()}); err != nil {
		t.Fatal(err)
	}
	// Nothing the backend holds contains the private key.
	raw := dump(t, be)
	if bytes.Contains(raw, priv[:16]) || bytes.Contains(raw, []byte("q6urq6urq6ur")) /* base64 of 0xAB... */ {
		t.Fatal("the backend holds the private key in the clear")
	}
	if got, err := d.SigningKeys(ctx); err != nil || len(got) != 1 || !bytes.Equal(got[0].Private, priv) {
		t.Fatalf("sealed key read back: %+v, %v", got, err)
	}
	// Without the KEK, or with another one, the key does not open.
	for name, opts := range map[string][]store.Option{
		"no kek":    nil,
		"wrong kek": {store.WithKeyEncryption(kek("kek1", 8))},
		"other id":  {store.WithKeyEncryption(kek("kek2", 7))},
	} {
		other, err := store.New(be, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := other.SigningKeys(ctx); err == nil {
			t.Errorf("%s: sealed key opened", name)
		}
	}
	// Rotation: kek2 current, kek1 still accepted; rewrap; then kek2 alone.
	rot, err := store.New(be, store.WithKeyEncryption(kek("kek2", 9), kek("kek1", 7)))
	if err != nil {
		t.Fatal(err)
	}
	if n, err := rot.RewrapSigningKeys(ctx); err != nil || n != 1 {
		t.Fatalf("rewrap: %d, %v", n, err)
	}
	if n, err := rot.RewrapSigningKeys(ctx); err != nil || n != 0 {
		t.Fatalf("second rewrap: %d, %v", n, err)
	}
	only2, err := store.New(be, store.WithKeyEncryption(kek("kek2", 9)))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := only2.SigningKeys(ctx); err != nil || len(got) != 1 || !bytes.Equal(got[0].Private, priv) {
		t.Fatalf("after rotation: %+v, %v", got, err)
	}
	if bytes.Contains(dump(t, be), priv[:16]) {
		t.Fatal("the backend holds the private key in the clear after rotation")
	}
}

// dump concatenates every value of the signing-key table.
func dump(t *testing.T, be store.Backend) []byte {
	t.Helper()
	var out []byte
	err := be.View(context.Background(), func(tx store.Tx) error {
		return tx.Scan("signing_keys", "", func(k string, v []byte) (bool, error) {
			out = append(append(out, k...), v...)
			return true, nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) == 0 {
		t.Fatal("no signing key stored")
	}
	return out
}

func testTaskOwners(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	orchA, orchB := "spiffe://example.org/orch/a", "spiffe://example.org/orch/b"
	exp := clk.Now().Add(time.Hour)
	got, err := d.ClaimTask(ctx, store.TaskOwner{Task: "T-1", Owner: orchA, Expires: exp},
		store.AuditEntry{Actor: orchA, Action: "task.claim", Object: "task/T-1"})
	if err != nil || got.Owner != orchA {
		t.Fatalf("first claim: %+v, %v", got, err)
	}
	got, err = d.ClaimTask(ctx, store.TaskOwner{Task: "T-1", Owner: orchB, Expires: exp})
	if !errors.Is(err, store.ErrConflict) || got.Owner != orchA {
		t.Fatalf("claim by another owner: %+v, %v; want ErrConflict naming %s", got, err, orchA)
	}
	later := exp.Add(time.Hour)
	if got, err = d.ClaimTask(ctx, store.TaskOwner{Task: "T-1", Owner: orchA, Expires: later}); err != nil || !got.Expires.Equal(later) {
		t.Fatalf("owner's claim extends: %+v, %v", got, err)
	}
	if got, err = d.TaskOwnerOf(ctx, "T-1"); err != nil || got.Owner != orchA {
		t.Fatalf("owner of T-1: %+v, %v", got, err)
	}
	if _, err = d.TaskOwnerOf(ctx, "T-2"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("owner of an unknown task: %v", err)
	}
	log, _ := d.AuditLog(ctx, time.Time{}, 0)
	if len(log) != 1 || log[0].Action != "task.claim" {
		t.Fatalf("audit: %+v (a refused claim must not be audited as a claim)", log)
	}
	clk.Advance(3 * time.Hour)
	if _, err = d.TaskOwnerOf(ctx, "T-1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("expired ownership still found: %v", err)
	}
	if got, err = d.ClaimTask(ctx, store.TaskOwner{Task: "T-1", Owner: orchB, Expires: clk.Now().Add(time.Hour)}); err != nil || got.Owner != orchB {
		t.Fatalf("claim after expiry: %+v, %v", got, err)
	}
	if _, err := d.ClaimTask(ctx, store.TaskOwner{Task: "T-9", Owner: orchA, Expires: clk.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	clk.Advance(2 * time.Minute)
	res, err := d.SweepExpired(ctx)
	if err != nil || res.Tasks != 1 {
		t.Fatalf("sweep: %+v, %v; want the one expired task", res, err)
	}
}

func testPendingQuota(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	alice, bob := "spiffe://example.org/agent/alice", "spiffe://example.org/agent/bob"
	put := func(id, subj string, ttl time.Duration) error {
		return d.PutPending(ctx, store.PendingApproval{ID: id, Subject: subj, Data: []byte(`{"id":"` + id + `"}`),
			Expires: clk.Now().Add(ttl)}, 3)
	}
	if err := put("b1", bob, time.Hour); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := put(fmt.Sprint("a", i), alice, time.Duration(i+1)*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	// Alice's flood is refused; Bob's request is untouched and Bob may add.
	for i := 3; i < 50; i++ {
		if err := put(fmt.Sprint("a", i), alice, time.Hour); !errors.Is(err, store.ErrQuota) {
			t.Fatalf("request %d over quota: %v", i, err)
		}
	}
	if err := put("b2", bob, time.Hour); err != nil {
		t.Fatalf("another subject's request: %v", err)
	}
	if p, err := d.Pending(ctx, "b1"); err != nil || p.Subject != bob || string(p.Data) != `{"id":"b1"}` {
		t.Fatalf("bob's request: %+v, %v", p, err)
	}
	// Updating a held request is not a new one.
	if err := put("a0", alice, time.Minute); err != nil {
		t.Fatalf("update of a held request: %v", err)
	}
	if err := put("a0", bob, time.Hour); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("request moved to another subject: %v", err)
	}
	// a0 expires at +1m: a slot frees.
	clk.Advance(90 * time.Second)
	if err := put("a9", alice, time.Hour); err != nil {
		t.Fatalf("after expiry: %v", err)
	}
	if err := d.DeletePending(ctx, "a9"); err != nil {
		t.Fatal(err)
	}
	if err := d.DeletePending(ctx, "a9"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	clk.Advance(2 * time.Minute)
	res, err := d.SweepExpired(ctx)
	if err != nil || res.Pending != 3 {
		t.Fatalf("sweep: %+v, %v; want alice's 3 expired requests", res, err)
	}
	list, _ := d.PendingList(ctx)
	if len(list) != 2 || list[0].ID != "b1" || list[1].ID != "b2" {
		t.Fatalf("left: %+v", list)
	}
	for i := range 3 {
		if err := put(fmt.Sprint("c", i), alice, time.Hour); err != nil {
			t.Fatalf("quota after sweep: %v", err)
		}
	}
}

func testApprovalUses(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	exp := clk.Now().Add(time.Minute)
	for i := uint32(1); i <= 2; i++ {
		if n, err := d.ClaimApprovalUse(ctx, "ap-1", 2, exp); err != nil || n != i {
			t.Fatalf("use %d: %d, %v", i, n, err)
		}
	}
	if _, err := d.ClaimApprovalUse(ctx, "ap-1", 2, exp); !errors.Is(err, store.ErrExhausted) {
		t.Fatalf("third use: %v", err)
	}
	if n, err := d.ClaimApprovalUse(ctx, "ap-2", 1, exp); err != nil || n != 1 {
		t.Fatalf("another approval: %d, %v", n, err)
	}
	clk.Advance(2 * time.Minute)
	if _, err := d.ClaimApprovalUse(ctx, "ap-3", 1, exp); !errors.Is(err, store.ErrExpired) {
		t.Fatalf("use of an expired approval: %v", err)
	}
	if res, err := d.SweepExpired(ctx); err != nil || res.Uses != 2 {
		t.Fatalf("sweep: %+v, %v", res, err)
	}
}

func testApprovalUsesConcurrent(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	exp := clk.Now().Add(time.Hour)
	var ok, exhausted atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, err := d.ClaimApprovalUse(ctx, "ap", 5, exp)
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, store.ErrExhausted):
				exhausted.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 5 || exhausted.Load() != 15 {
		t.Fatalf("%d uses granted, %d refused; want 5 and 15", ok.Load(), exhausted.Load())
	}
}

func testImport(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, clk := open(t, nb)
	snap := store.Snapshot{
		Resources:   map[string][]store.Item{typeA: items("p", "1"), typeB: {}},
		SigningKeys: []store.SigningKey{{ID: "k", Algorithm: "EdDSA", Private: []byte("x"), CreatedAt: clk.Now().UTC()}},
		Audit: []store.AuditEntry{
			{Seq: 7, Time: clk.Now().Add(-time.Hour), Actor: actor, Action: "old"},
			{Seq: 9, Time: clk.Now().Add(-time.Minute), Actor: actor, Action: "newer"},
		},
	}
	if err := d.Import(ctx, snap); err != nil {
		t.Fatal(err)
	}
	got, va := mustList(t, d, typeA)
	sameItems(t, got, items("p", "1"))
	if _, vb := mustList(t, d, typeB); va == 0 || vb != va {
		t.Fatalf("imported types at versions %d and %d", va, vb)
	}
	log, _ := d.AuditLog(ctx, clk.Now().Add(-30*time.Minute), 0)
	if len(log) != 1 || log[0].Seq != 9 {
		t.Fatalf("imported audit since -30m: %+v", log)
	}
	if err := d.AppendAudit(ctx, store.AuditEntry{Action: "next"}); err != nil {
		t.Fatal(err)
	}
	all, _ := d.AuditLog(ctx, time.Time{}, 0)
	if len(all) != 3 || all[2].Seq != 10 {
		t.Fatalf("after import: %+v", all)
	}
	if err := d.Import(ctx, store.Snapshot{Audit: snap.Audit}); err == nil {
		t.Fatal("import into a store with an audit trail accepted")
	}
}

func testUpdate(t *testing.T, nb NewBackend) {
	ctx := context.Background()
	d, _, _ := open(t, nb)
	v0, err := d.Put(ctx, typeA, items("a", "1", "b", "2"))
	if err != nil {
		t.Fatal(err)
	}
	v1, err := d.Update(ctx, typeA, items("c", "3", "a", "10"), []string{"b"}, store.AuditEntry{Actor: actor, Action: "update"})
	if err != nil || v1 <= v0 {
		t.Fatalf("update: %d after %d, %v", v1, v0, err)
	}
	got, v := mustList(t, d, typeA)
	sameItems(t, got, items("a", "10", "c", "3"))
	if v != v1 {
		t.Fatalf("list version %d, update returned %d", v, v1)
	}
	// A missing delete fails the whole update: the put is not stored.
	if _, err := d.Update(ctx, typeA, items("d", "4"), []string{"missing"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("update with a missing delete: %v", err)
	}
	if _, err := d.Update(ctx, typeA, items("a", "5"), []string{"a"}); err == nil {
		t.Fatal("a name both put and deleted accepted")
	}
	if _, err := d.Update(ctx, typeA, nil, nil); err == nil {
		t.Fatal("an empty update accepted")
	}
	got, v = mustList(t, d, typeA)
	sameItems(t, got, items("a", "10", "c", "3"))
	if v != v1 {
		t.Fatalf("refused updates moved the version to %d", v)
	}
}
