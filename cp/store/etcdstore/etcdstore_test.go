package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// TestSerializableReadsNeverDecide: a write's first attempt reads the
// member's own state, which may miss another instance's commit. Two
// instances on different members append to the audit trail and revoke
// at once (every append reads and raises the trail's counter): no entry
// is lost or numbered twice, and every record is stored. A backend that
// knows of a revision its member has not applied (seen ahead of the
// store) still writes, through linearizable reads, and answers a read
// that found nothing with the state it found linearizably.
func TestSerializableReadsNeverDecide(t *testing.T) {
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
	const n = 60
	var wg sync.WaitGroup
	for i := range 2 {
		wg.Go(func() {
			for j := range n {
				name := fmt.Sprintf("r-%d-%d", i, j)
				if _, err := dbs[i].Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: name, Value: []byte(name)}},
					store.AuditEntry{Actor: "a", Action: "revocation.create", Object: name}); err != nil {
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
	if len(log) != 2*n || len(objects) != 2*n || len(items) != 2*n {
		t.Fatalf("%d audit entries (%d distinct), %d records after %d writes", len(log), len(objects), len(items), 2*n)
	}

	bes[0].seen.Store(1 << 40) // no member has applied this
	v, err := dbs[0].Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: "ahead", Value: []byte("x")}},
		store.AuditEntry{Actor: "a", Action: "revocation.create", Object: "ahead"})
	if err != nil || v == 0 {
		t.Fatalf("write from a backend ahead of its member: %d, %v", v, err)
	}
	if _, err := dbs[0].Delete(ctx, mandatev1.RevocationTypeURL, []string{"absent"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("delete of an absent record: %v, want ErrNotFound", err)
	}
}
