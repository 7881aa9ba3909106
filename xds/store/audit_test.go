package store

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// appendAudits writes es in transactions of up to 10,000 entries (one
// Audit call per entry would sync the file each time).
func appendAudits(tb testing.TB, s *Store, es []AuditEntry) {
	tb.Helper()
	for len(es) > 0 {
		n := min(len(es), 10000)
		if err := s.update(context.Background(), es[:n], func(*bolt.Tx) error { return nil }); err != nil {
			tb.Fatal(err)
		}
		es = es[n:]
	}
}

// wantAudit is the reference: every entry with time >= since in sequence
// order, at most limit (es[i] has seq i+1).
func wantAudit(es []AuditEntry, since time.Time, limit int) []uint64 {
	var out []uint64
	for i, e := range es {
		if len(out) == limit {
			break
		}
		if !e.Time.Before(since) {
			out = append(out, uint64(i+1))
		}
	}
	return out
}

func seqs(es []AuditEntry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.Seq
	}
	return out
}

func equalSeqs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestAuditLogSeek(t *testing.T) {
	ctx := context.Background()
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 3000
	mono := make([]AuditEntry, n)
	for i := range mono {
		mono[i] = AuditEntry{Time: base.Add(time.Duration(i) * time.Second), Actor: "a", Action: "act", Object: strconv.Itoa(i)}
	}
	// A clock that steps back now and then (NTP corrections, a restored
	// VM), and entries sharing a time.
	jumpy := make([]AuditEntry, n)
	at := base
	for i := range jumpy {
		switch r := rng.IntN(20); {
		case r == 0:
			at = at.Add(-time.Duration(rng.IntN(120)) * time.Second)
		case r < 4:
			// same time as the previous entry
		default:
			at = at.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
		}
		jumpy[i] = AuditEntry{Time: at, Actor: "a", Action: "act", Object: strconv.Itoa(i)}
	}
	type tc struct {
		name  string
		log   string
		since time.Time
		limit int
	}
	tests := []tc{
		{"monotonic, all", "monotonic", time.Time{}, n},
		{"monotonic, middle", "monotonic", base.Add(1500 * time.Second), n},
		{"monotonic, middle, between two entries", "monotonic", base.Add(1500*time.Second + time.Millisecond), n},
		{"monotonic, middle, limit", "monotonic", base.Add(1500 * time.Second), 10},
		{"monotonic, last", "monotonic", base.Add((n - 1) * time.Second), n},
		{"monotonic, after the last", "monotonic", base.Add(n * time.Second), n},
		{"monotonic, before the first", "monotonic", base.Add(-time.Hour), 5},
		{"jumpy, all", "jumpy", time.Time{}, n},
		{"jumpy, limit", "jumpy", time.Time{}, 7},
		{"jumpy, after the last", "jumpy", at.Add(time.Hour), n},
	}
	// Every entry's own time as since, and a bit after it, on the jumpy log.
	for i := 0; i < n; i += 97 {
		tests = append(tests,
			tc{"jumpy, at entry " + strconv.Itoa(i), "jumpy", jumpy[i].Time, n},
			tc{"jumpy, after entry " + strconv.Itoa(i) + ", limit", "jumpy", jumpy[i].Time.Add(time.Nanosecond), 50})
	}
	logs := map[string][]AuditEntry{"monotonic": mono, "jumpy": jumpy}
	stores := map[string]*Store{}
	for name, es := range logs {
		s := open(t, t.TempDir())
		t.Cleanup(func() { _ = s.Close() })
		appendAudits(t, s, es)
		stores[name] = s
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			es := logs[tt.log]
			got, err := stores[tt.log].AuditLog(ctx, tt.since, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			want := wantAudit(es, tt.since, tt.limit)
			if !equalSeqs(seqs(got), want) {
				t.Fatalf("got %d entries %v..., want %d %v...", len(got), head(seqs(got)), len(want), head(want))
			}
			for _, e := range got {
				if e.Object != strconv.FormatUint(e.Seq-1, 10) || !e.Time.Equal(es[e.Seq-1].Time) {
					t.Fatalf("entry %d is %+v", e.Seq, e)
				}
			}
		})
	}
}

func head(s []uint64) []uint64 { return s[:min(len(s), 5)] }

// TestAuditLogDoesNotReadOlderEntries proves the seek: an unreadable entry
// older than since fails a full scan, not AuditLog.
func TestAuditLogDoesNotReadOlderEntries(t *testing.T) {
	ctx := context.Background()
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s := open(t, t.TempDir())
	defer s.Close()
	var es []AuditEntry
	for i := range 100 {
		es = append(es, AuditEntry{Time: base.Add(time.Duration(i) * time.Minute), Action: "act", Object: strconv.Itoa(i)})
	}
	appendAudits(t, s, es)
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketAudit).Put(seqKey(10), []byte("{not json")) }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AuditLog(ctx, time.Time{}, 1000); err == nil {
		t.Fatal("reading the corrupt entry did not fail")
	}
	got, err := s.AuditLog(ctx, base.Add(50*time.Minute), 1000)
	if err != nil || len(got) != 50 || got[0].Seq != 51 {
		t.Fatalf("AuditLog after the corrupt entry: %d entries, %v", len(got), err)
	}
}

// TestAuditIndexBuiltOnOpen: a store written before the index existed
// gets it when opened.
func TestAuditIndexBuiltOnOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s := open(t, dir)
	es := []AuditEntry{
		{Time: base, Action: "a", Object: "0"},
		{Time: base.Add(2 * time.Hour), Action: "a", Object: "1"},
		{Time: base.Add(time.Hour), Action: "a", Object: "2"}, // clock stepped back
		{Time: base.Add(3 * time.Hour), Action: "a", Object: "3"},
	}
	appendAudits(t, s, es)
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketAuditTime) }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = open(t, dir)
	defer s.Close()
	for _, since := range []time.Time{{}, base.Add(time.Hour), base.Add(90 * time.Minute), base.Add(3 * time.Hour), base.Add(4 * time.Hour)} {
		got, err := s.AuditLog(ctx, since, 10)
		if err != nil || !equalSeqs(seqs(got), wantAudit(es, since, 10)) {
			t.Fatalf("since %v: %v %v, want %v", since, seqs(got), err, wantAudit(es, since, 10))
		}
	}
	// New entries keep the rebuilt index up to date.
	if err := s.Audit(ctx, AuditEntry{Time: base.Add(5 * time.Hour), Action: "a", Object: "4"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.AuditLog(ctx, base.Add(4*time.Hour), 10)
	if err != nil || len(got) != 1 || got[0].Object != "4" {
		t.Fatalf("after a new entry: %+v %v", got, err)
	}
}

// TestAuditIndexOpenRefusesCorruptLog: building the index over an
// unreadable entry fails the open instead of serving a wrong index.
func TestAuditIndexOpenRefusesCorruptLog(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	appendAudits(t, s, []AuditEntry{{Action: "a"}, {Action: "b"}})
	if err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketAuditTime); err != nil {
			return err
		}
		return tx.Bucket(bucketAudit).Put(seqKey(2), []byte(`{"time": 7}`))
	}); err != nil {
		t.Fatal(err)
	}
	_ = s.Close()
	if s, err := Open(context.Background(), dir); err == nil {
		_ = s.Close()
		t.Fatal("opened a store whose audit log cannot be indexed")
	}
}

// BenchmarkAuditLog: 100k entries; the cost follows the entries returned.
func BenchmarkAuditLog(b *testing.B) {
	ctx := context.Background()
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	s, err := Open(ctx, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const n = 100_000
	es := make([]AuditEntry, n)
	detail, _ := json.Marshal(map[string]string{"reason": "benchmark entry with a typical detail"})
	for i := range es {
		es[i] = AuditEntry{Time: base.Add(time.Duration(i) * time.Second), Actor: "spiffe://example.org/mandate/operator",
			Action: "revoke", Object: "revocation/r-" + strconv.Itoa(i), Detail: string(detail)}
	}
	appendAudits(b, s, es)
	for _, bc := range []struct {
		name  string
		since time.Time
		limit int
		want  int
	}{
		{"last hour", base.Add((n - 3600) * time.Second), 10000, 3600},
		{"last 10", base.Add((n - 10) * time.Second), 1000, 10},
		{"middle, limit 100", base.Add(n / 2 * time.Second), 100, 100},
		{"after the last", base.Add(n * time.Second), 1000, 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				got, err := s.AuditLog(ctx, bc.since, bc.limit)
				if err != nil || len(got) != bc.want {
					b.Fatalf("%d entries, %v; want %d", len(got), err, bc.want)
				}
			}
		})
	}
}
