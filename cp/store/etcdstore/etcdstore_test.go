package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/storetest"
	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

var prefixes atomic.Int64

func backend(t *testing.T, c *etcdtest.Cluster, endpoints []string, prefix string) *Backend {
	t.Helper()
	be, err := OpenBackend(context.Background(), Config{Endpoints: endpoints, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	return be
}

func freshPrefix() string { return fmt.Sprintf("/test-%d/", prefixes.Add(1)) }

// openDB opens a backend with cfg (a fresh prefix unless cfg names one)
// and a DB over it, closed when the test ends.
func openDB(tb testing.TB, cfg Config) (*Backend, *store.DB) {
	tb.Helper()
	if cfg.Prefix == "" {
		cfg.Prefix = freshPrefix()
	}
	be, err := OpenBackend(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	d, err := store.New(be)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = d.Close() })
	return be, d
}

// TestConformance runs the store conformance suite on a real 3-member
// etcd cluster, each test under its own key prefix.
func TestConformance(t *testing.T) {
	c := etcdtest.Start(t, 3)
	storetest.Run(t, func(t *testing.T) store.Backend {
		return backend(t, c, c.Endpoints(), freshPrefix())
	})
}

// TestTwoInstancesShareOneState: two DBs on different members (two
// mandate-cp instances) see each other's writes, versions are etcd
// revisions shared by both, and a use count or a quota holds across them
// under concurrent claims.
func TestTwoInstancesShareOneState(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	prefix := freshPrefix()
	var dbs []*store.DB
	for i := range 2 {
		d, err := store.New(backend(t, c, []string{c.Members[i].ClientURL}, prefix))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		dbs = append(dbs, d)
	}
	v1, err := dbs[0].Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: "r1", Value: []byte("x")}})
	if err != nil {
		t.Fatal(err)
	}
	items, v, err := dbs[1].List(ctx, mandatev1.RevocationTypeURL)
	if err != nil || len(items) != 1 || v != v1 {
		t.Fatalf("the other instance sees %v at %d (%v), want r1 at %d", items, v, err, v1)
	}
	v2, err := dbs[1].Delete(ctx, mandatev1.RevocationTypeURL, []string{"r1"})
	if err != nil || v2 <= v1 {
		t.Fatalf("delete from the other instance: %d, %v", v2, err)
	}
	// 40 claims of a 7-use approval, from both instances at once.
	exp := time.Now().Add(time.Hour)
	var granted, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Go(func() {
			_, err := dbs[i%2].ClaimApprovalUse(ctx, "ap", 7, exp)
			switch {
			case err == nil:
				granted.Add(1)
			case errors.Is(err, store.ErrExhausted):
				refused.Add(1)
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if granted.Load() != 7 || refused.Load() != 33 {
		t.Fatalf("%d uses granted across instances, %d refused; want 7 and 33", granted.Load(), refused.Load())
	}
	// A per-subject quota of 3, flooded from both instances.
	var ok atomic.Int32
	for i := range 20 {
		wg.Go(func() {
			err := dbs[i%2].PutPending(ctx, store.PendingApproval{ID: fmt.Sprint("p", i), Subject: "s", Expires: exp}, 3)
			if err == nil {
				ok.Add(1)
			} else if !errors.Is(err, store.ErrQuota) {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 3 {
		t.Fatalf("%d pending requests stored under a quota of 3", ok.Load())
	}
}

// TestWritesSurviveOneMemberDown: with one of three members killed,
// writes continue and nothing committed is lost; with two down (no
// quorum) a write fails with an error within its deadline.
func TestWritesSurviveOneMemberDown(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	d, err := store.New(backend(t, c, c.Endpoints(), freshPrefix()))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	put := func(ctx context.Context, name string) error {
		_, err := d.Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: name, Value: []byte(name)}})
		return err
	}
	if err := put(ctx, "before"); err != nil {
		t.Fatal(err)
	}
	c.Kill(0)
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := etcdtest.WaitHealthy(wctx, func(ctx context.Context) error { return put(ctx, "one-down") }); err != nil {
		t.Fatalf("write with one member down: %v", err)
	}
	c.Kill(1)
	qctx, qcancel := context.WithTimeout(ctx, 3*time.Second)
	defer qcancel()
	if err := put(qctx, "no-quorum"); err == nil {
		t.Fatal("a write succeeded without quorum")
	}
	c.Restart(1)
	if err := etcdtest.WaitHealthy(wctx, func(ctx context.Context) error { return put(ctx, "quorum-back") }); err != nil {
		t.Fatalf("write with quorum back: %v", err)
	}
	items, _, err := d.List(ctx, mandatev1.RevocationTypeURL)
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, it := range items {
		have[it.Name] = true
	}
	if !have["before"] || !have["one-down"] || !have["quorum-back"] {
		t.Fatalf("after the outage: %v", have)
	}
}

// TestGuessedReadsNeverDecide: a write's first attempt takes the audit
// trail's counter as this backend's last commit left it, and reads other
// keys from the member's own state; both may miss another instance's
// commit. A write from one instance reads nothing from etcd before its
// Txn once it has written. Two instances on different members append to
// the audit trail and revoke at once (every append raises the counter):
// no entry is lost or numbered twice, and every record is stored. A
// backend that knows of a revision its member has not applied (seen
// ahead of the store) still writes, through linearizable reads, and
// answers a read that found nothing with the state it found
// linearizably.
func TestGuessedReadsNeverDecide(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	prefix := freshPrefix()
	var bes []*Backend
	var dbs []*store.DB
	for i := range 2 {
		be := backend(t, c, []string{c.Members[i].ClientURL}, prefix)
		d, err := store.New(be)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		bes, dbs = append(bes, be), append(dbs, d)
	}
	revoke := func(i int, name string) (uint64, error) {
		return dbs[i].Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: name, Value: []byte(name)}},
			store.AuditEntry{Actor: "a", Action: "revocation.create", Object: name})
	}
	first, err := revoke(0, "first")
	if err != nil {
		t.Fatal(err)
	}
	meta := bes[0].key("meta", "audit")
	if _, rev, ok := bes[0].known.get(meta); !ok || rev != int64(first) {
		t.Fatalf("after a write at %d, the audit counter is known at %d (%v)", first, rev, ok)
	}
	const n = 60
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			for j := range n {
				if _, err := revoke(i, fmt.Sprintf("r-%d-%d", i, j)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	log, err := dbs[0].AuditLog(ctx, time.Time{}, 10*n)
	if err != nil {
		t.Fatal(err)
	}
	objects := map[string]bool{}
	for i, e := range log {
		if e.Seq != uint64(i+1) {
			t.Fatalf("audit entry %d has sequence number %d", i, e.Seq)
		}
		objects[e.Object] = true
	}
	items, _, err := dbs[1].List(ctx, mandatev1.RevocationTypeURL)
	if err != nil {
		t.Fatal(err)
	}
	if len(log) != 2*n+1 || len(objects) != 2*n+1 || len(items) != 2*n+1 {
		t.Fatalf("%d audit entries (%d distinct), %d records after %d writes", len(log), len(objects), len(items), 2*n+1)
	}

	bes[0].seen.Store(1 << 40) // no member has applied this
	bes[0].known.forget(map[string]int64{meta: 0})
	v, err := revoke(0, "ahead")
	if err != nil || v == 0 {
		t.Fatalf("write from a backend ahead of its member: %d, %v", v, err)
	}
	if _, err := dbs[0].Delete(ctx, mandatev1.RevocationTypeURL, []string{"absent"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete of an absent record: %v, want ErrNotFound", err)
	}
}

// TestRevokeReadsNothingBeforeItsTxn: once an instance has written, a
// revocation with its audit entry is one etcd call, the Txn (the audit
// counter is known from the previous commit); another instance's write
// in between costs one failed Txn and a linearizable retry, not a wrong
// sequence number.
func TestRevokeReadsNothingBeforeItsTxn(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	var ranges, txns atomic.Int32
	count := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		switch method {
		case "/etcdserverpb.KV/Range":
			ranges.Add(1)
		case "/etcdserverpb.KV/Txn":
			txns.Add(1)
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	cl, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(count)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	prefix := freshPrefix()
	be, err := NewBackend(cl, prefix)
	if err != nil {
		t.Fatal(err)
	}
	d, err := store.New(be)
	if err != nil {
		t.Fatal(err)
	}
	other, err := store.New(backend(t, c, c.Endpoints(), prefix))
	if err != nil {
		t.Fatal(err)
	}
	revoke := func(d *store.DB, name string) {
		t.Helper()
		if _, err := d.Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: name, Value: []byte(name)}},
			store.AuditEntry{Actor: "a", Action: "revocation.create", Object: name}); err != nil {
			t.Fatal(err)
		}
	}
	revoke(d, "r0")
	for i := 1; i <= 5; i++ {
		r0, t0 := ranges.Load(), txns.Load()
		revoke(d, fmt.Sprint("r", i))
		if r, tx := ranges.Load()-r0, txns.Load()-t0; r != 0 || tx != 1 {
			t.Fatalf("revocation %d: %d reads and %d Txns, want 0 and 1", i, r, tx)
		}
	}
	revoke(other, "from-the-other")
	t0 := txns.Load()
	revoke(d, "after-the-other")
	if tx := txns.Load() - t0; tx != 2 {
		t.Fatalf("%d Txns after another instance's write, want 2 (the guess fails, the retry commits)", tx)
	}
	log, err := d.AuditLog(ctx, time.Time{}, 100)
	if err != nil || len(log) != 8 || log[7].Seq != 8 || log[7].Object != "after-the-other" || log[6].Object != "from-the-other" {
		t.Fatalf("audit trail: %+v, %v", log, err)
	}
}
