package plane

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/authz/revocation"
	xdsclient "github.com/mandate-dev/mandate/xds/client"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

func subjects(n int, exp time.Time) []revocation.Record {
	out := make([]revocation.Record, n)
	for i := range out {
		out[i] = revocation.Record{Kind: revocation.KindSubject, Value: fmt.Sprintf("spiffe://example.org/agent/a%d", i),
			Expires: exp, Reason: "batch"}
	}
	return out
}

func TestRevokeManyAllOrNothing(t *testing.T) {
	ctx := context.Background()
	good := func() []revocation.Record { return subjects(5, future()) }
	tests := []struct {
		name  string
		batch func() []revocation.Record
		want  string // substring of the error
	}{
		{"empty", func() []revocation.Record { return nil }, "1 to"},
		{"too many", func() []revocation.Record { return subjects(MaxRevokeBatch+1, future()) }, "1 to"},
		{"last not spiffe", func() []revocation.Record {
			b := good()
			b[4].Value = "agent-a"
			return b
		}, "revocation 5 of 5"},
		{"first expired", func() []revocation.Record {
			b := good()
			b[0].Expires = time.Now().Add(-time.Minute)
			return b
		}, "revocation 1 of 5"},
		{"same id twice", func() []revocation.Record {
			b := good()
			b[1].ID, b[3].ID = "r-same", "r-same"
			return b
		}, "twice"},
		{"id already stored", func() []revocation.Record {
			b := good()
			b[2].ID = "r-existing"
			return b
		}, "already exists"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := open(t, t.TempDir())
			rep := startReplica(t, e.addr, "n1")
			if _, v, err := e.p.RevokeMany(ctx, []revocation.Record{{ID: "r-existing", Kind: revocation.KindTask,
				Value: "t0", Expires: future()}}, "op"); err != nil || v != "1" {
				t.Fatalf("first revoke: %q %v", v, err)
			}
			waitFor(t, "replica at version 1", func() bool {
				s, ok := rep.applied.Load().(xdsclient.State)
				return ok && s.Versions[mandatev1.RevocationTypeURL] == "1"
			})
			_, _, err := e.p.RevokeMany(ctx, tt.batch(), "op")
			var inv *InvalidError
			if !errors.As(err, &inv) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("RevokeMany = %v, want InvalidError mentioning %q", err, tt.want)
			}
			if v := e.xds.Versions()[mandatev1.RevocationTypeURL]; v != "1" {
				t.Errorf("xDS revocation version moved to %s", v)
			}
			stored, sv, _ := load(ctx, e.st, mandatev1.RevocationTypeURL, newRevocation)
			if sv != 1 || len(stored) != 1 {
				t.Errorf("store changed: version %d, %d records", sv, len(stored))
			}
			if rs, _ := e.p.Revocations(true); len(rs) != 1 {
				t.Errorf("plane holds %d records", len(rs))
			}
			if log, _ := e.st.AuditLog(ctx, time.Time{}, 0); len(log) != 1 {
				t.Errorf("%d audit entries, want 1", len(log))
			}
		})
	}
}

func TestRevokeManyOneVersionPerBatch(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir())
	rep := startReplica(t, e.addr, "n1")
	var all []string
	for b := 1; b <= 3; b++ {
		batch := subjects(200, future())
		for i := range batch {
			batch[i].Value += fmt.Sprintf("-b%d", b)
		}
		batch[7].Intents = []string{"read"}
		recs, v, err := e.p.RevokeMany(ctx, batch, "spiffe://example.org/mandate/operator")
		if err != nil || v != fmt.Sprint(b) || len(recs) != 200 {
			t.Fatalf("batch %d: %d records, version %q, %v", b, len(recs), v, err)
		}
		for i, r := range recs {
			if r.GetValue() != batch[i].Value || !strings.HasPrefix(r.GetName(), "r-") ||
				r.GetCreatedBy() != "spiffe://example.org/mandate/operator" {
				t.Fatalf("record %d = %v (want value %s, in order)", i, r, batch[i].Value)
			}
			all = append(all, r.GetName())
		}
		if sv, _ := e.st.Version(ctx, mandatev1.RevocationTypeURL); sv != uint64(b) {
			t.Fatalf("store version %d after batch %d", sv, b)
		}
	}
	waitFor(t, "replica at version 3", func() bool {
		s, ok := rep.applied.Load().(xdsclient.State)
		return ok && s.Versions[mandatev1.RevocationTypeURL] == "3"
	})
	s := rep.applied.Load().(xdsclient.State)
	if s.Revocations.Len() != 600 {
		t.Fatalf("replica holds %d records, want 600", s.Revocations.Len())
	}
	if v := s.Revocations.Check(time.Now(), revocation.Query{Subject: "spiffe://example.org/agent/a199-b3"}); !v.Revoked {
		t.Fatalf("last subject of the last batch not revoked on the replica: %+v", v)
	}
	log, err := e.st.AuditLog(ctx, time.Time{}, 0)
	if err != nil || len(log) != 600 {
		t.Fatalf("audit: %d entries (%v), want one per record", len(log), err)
	}
	downgrades := 0
	for i, a := range log {
		if a.Object != "revocation/"+all[i] || a.Actor != "spiffe://example.org/mandate/operator" || !strings.Contains(a.Detail, "spiffe://example.org/agent/") {
			t.Fatalf("audit entry %d = %+v, want record %s", i, a, all[i])
		}
		if a.Action == "downgrade.create" {
			downgrades++
		}
	}
	if downgrades != 3 {
		t.Errorf("%d downgrade entries, want 3", downgrades)
	}
}

func TestRevokeManyConcurrentBatches(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir())
	var wg sync.WaitGroup
	versions := make(chan string, 8)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := subjects(50, future())
			for i := range b {
				b[i].Value += fmt.Sprintf("-w%d", w)
			}
			_, v, err := e.p.RevokeMany(ctx, b, "op")
			if err != nil {
				t.Error(err)
			}
			versions <- v
		}()
	}
	wg.Wait()
	close(versions)
	seen := map[string]bool{}
	for v := range versions {
		if seen[v] {
			t.Fatalf("two batches got version %s", v)
		}
		seen[v] = true
	}
	if rs, v := e.p.Revocations(false); len(rs) != 400 || v != "8" {
		t.Fatalf("%d records at version %s, want 400 at 8", len(rs), v)
	}
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func TestSweepRevocations(t *testing.T) {
	ctx := context.Background()
	clk := &fakeClock{now: time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)}
	dir := t.TempDir()
	e := open(t, dir, WithClock(clk.Now), WithRevocationRetention(time.Hour), WithSweepInterval(time.Minute))
	rep := startReplica(t, e.addr, "n1")
	t0 := clk.Now()
	short, _, err := e.p.RevokeMany(ctx, subjects(3, t0.Add(10*time.Minute)), "op")
	if err != nil {
		t.Fatal(err)
	}
	long := subjects(1, t0.Add(3*time.Hour))
	long[0].Value = "spiffe://example.org/agent/long"
	if _, _, err := e.p.RevokeMany(ctx, long, "op"); err != nil {
		t.Fatal(err)
	}

	steps := []struct {
		name    string
		advance time.Duration // from t0
		skipped bool
		removed int
		version string
	}{
		{"nothing expired", 0, false, 0, "2"},
		{"again within the interval", 30 * time.Second, true, 0, "2"},
		{"expired, retention not over", 65 * time.Minute, false, 0, "2"},
		{"exactly at the retention", 70 * time.Minute, false, 0, "2"},
		{"retention over", 70*time.Minute + time.Second, true, 0, "2"}, // within the interval of the last sweep
		{"next interval", 71*time.Minute + time.Second, false, 3, "3"},
		{"nothing more", 73 * time.Minute, false, 0, "3"},
	}
	for _, s := range steps {
		clk.mu.Lock()
		clk.now = t0.Add(s.advance)
		clk.mu.Unlock()
		res, err := e.p.SweepRevocations(ctx)
		if err != nil || res.Skipped != s.skipped || res.Removed != s.removed || res.Version != s.version {
			t.Fatalf("%s: %+v %v; want skipped=%v removed=%d version=%s", s.name, res, err, s.skipped, s.removed, s.version)
		}
	}
	rs, _ := e.p.Revocations(true)
	if len(rs) != 1 || rs[0].GetValue() != "spiffe://example.org/agent/long" {
		t.Fatalf("left: %v", rs)
	}
	stored, sv, _ := load(ctx, e.st, mandatev1.RevocationTypeURL, newRevocation)
	if len(stored) != 1 || sv != 3 || stored[short[0].GetName()] != nil {
		t.Fatalf("store: %d records at version %d", len(stored), sv)
	}
	waitFor(t, "replica at version 3", func() bool {
		s, ok := rep.applied.Load().(xdsclient.State)
		return ok && s.Versions[mandatev1.RevocationTypeURL] == "3"
	})
	if n := rep.applied.Load().(xdsclient.State).Revocations.Len(); n != 1 {
		t.Fatalf("replica holds %d records after the sweep, want 1", n)
	}
	log, _ := e.st.AuditLog(ctx, time.Time{}, 0)
	last := log[len(log)-1]
	if len(log) != 5 || last.Actor != GCActor || last.Action != "revocation.gc" || !strings.Contains(last.Detail, "removed 3 records") {
		t.Fatalf("audit: %d entries, last %+v", len(log), last)
	}

	// A restart continues at the swept version.
	e.close()
	e2 := open(t, dir, WithClock(clk.Now))
	if rs, v := e2.p.Revocations(true); len(rs) != 1 || v != "3" {
		t.Fatalf("after restart: %d records at version %s", len(rs), v)
	}
}

func TestRunSweeper(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	clk := &fakeClock{now: time.Now()}
	ticks := make(chan time.Time)
	stopped := make(chan struct{})
	e := open(t, t.TempDir(), WithClock(clk.Now), WithRevocationRetention(time.Minute))
	e.p.newTicker = func(d time.Duration) (<-chan time.Time, func()) {
		if d != DefaultSweepInterval {
			t.Errorf("ticker interval %v", d)
		}
		return ticks, func() { close(stopped) }
	}
	if _, _, err := e.p.RevokeMany(ctx, subjects(2, clk.Now().Add(time.Minute)), "op"); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); e.p.RunSweeper(ctx) }()
	ticks <- clk.Now() // nothing expired
	clk.Add(3 * time.Minute)
	ticks <- clk.Now() // expired 2 minutes ago: removed
	ticks <- clk.Now() // an unbuffered send returns once the loop took it: the previous sweep is done
	if rs, v := e.p.Revocations(true); len(rs) != 0 || v != "2" {
		t.Fatalf("after the sweep: %d records at version %s", len(rs), v)
	}
	cancel()
	<-done
	<-stopped

	// Retention 0 disables the sweeper.
	e0 := open(t, t.TempDir(), WithRevocationRetention(0))
	e0.p.newTicker = func(time.Duration) (<-chan time.Time, func()) { t.Error("ticker started"); return nil, func() {} }
	e0.p.RunSweeper(context.Background())
	if res, _ := e0.p.SweepRevocations(context.Background()); !res.Skipped {
		t.Fatal("sweep ran with retention 0")
	}
	if _, err := New(ctx, e0.st, e0.xds, discard(), WithRevocationRetention(-time.Second)); err == nil {
		t.Fatal("negative retention accepted")
	}
}
