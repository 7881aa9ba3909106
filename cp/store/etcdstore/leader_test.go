package etcdstore

import (
	"context"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/internal/testkit"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// leads reports whether the member behind ep says it is the leader.
func leads(t *testing.T, b *Backend, ep string) bool {
	t.Helper()
	c, err := b.memberClient(ep)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	st, err := pb.NewMaintenanceClient(c.ActiveConnection()).Status(ctx, &pb.StatusRequest{})
	return err == nil && st.GetHeader().GetMemberId() == st.GetLeader()
}

// writerEndpoint returns the endpoint of the member client transactions
// go through ("" for the balanced client).
func writerEndpoint(b *Backend) string {
	w := b.writer()
	b.mmu.Lock()
	defer b.mmu.Unlock()
	for ep, c := range b.mcs {
		if c == w {
			return ep
		}
	}
	return ""
}

// TestWritesGoThroughTheLeader: with three endpoints, transactions go
// through the member that leads; when it is killed, through the balanced
// client at once (its connection is down), then through the new leader;
// writes succeed throughout.
func TestWritesGoThroughTheLeader(t *testing.T) {
	ctx := context.Background()
	c := etcdtest.Start(t, 3)
	be, err := OpenBackend(ctx, Config{Endpoints: c.Endpoints(), Prefix: freshPrefix(), ProbeEvery: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	d, err := store.New(be)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	put := func(ctx context.Context, name string) error {
		_, err := d.Put(ctx, mandatev1.RevocationTypeURL, []store.Item{{Name: name, Value: []byte(name)}})
		return err
	}
	var first string
	testkit.WaitUntil(t, "writes through the leader", func() bool {
		first = writerEndpoint(be)
		return first != "" && leads(t, be, first)
	})
	if err := put(ctx, "through-leader"); err != nil {
		t.Fatal(err)
	}
	dead := -1
	for i, ep := range c.Endpoints() {
		if ep == first {
			dead = i
		}
	}
	c.Kill(dead)
	testkit.WaitUntil(t, "writes away from the killed member", func() bool { return writerEndpoint(be) != first })
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := etcdtest.WaitHealthy(wctx, func(ctx context.Context) error { return put(ctx, "leader-killed") }); err != nil {
		t.Fatalf("write after the leader was killed: %v", err)
	}
	testkit.WaitUntil(t, "writes through the new leader", func() bool {
		ep := writerEndpoint(be)
		return ep != "" && ep != first && leads(t, be, ep)
	})
	if err := put(ctx, "through-new-leader"); err != nil {
		t.Fatal(err)
	}
}
