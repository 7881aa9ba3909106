package instance

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/internal/testkit"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TestInstancesOnEtcd: two instances assembled on one etcd serve the
// same state (a revocation written through A is listed by B at the same
// version); A stops cleanly and B goes on writing.
func TestInstancesOnEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	kek := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(kek, []byte("kek-1 "+base64.StdEncoding.EncodeToString(make([]byte, 32))+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	onEtcd := func(id string) Config {
		cfg := testConfig(t)
		cfg.Store = StoreConfig{EtcdEndpoints: c.Endpoints(), EtcdPrefix: "/mandate-test/", KEKFile: kek,
			LeaseTTL: 2 * time.Second, EtcdGrace: 5 * time.Second, InstanceID: id}
		return cfg
	}
	a, b := startInstance(t, onEtcd("a")), startInstance(t, onEtcd("b"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ac := mandatev1.NewAdminClient(testkit.Dial(t, a.addrs["admin"]))
	bc := mandatev1.NewAdminClient(testkit.Dial(t, b.addrs["admin"]))
	r, err := ac.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "subject", Value: "spiffe://example.org/agent/m", Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		l, err := bc.ListRevocations(ctx, &mandatev1.ListRevocationsRequest{})
		if err == nil && l.GetVersion() == r.GetVersion() && len(l.GetRevocations()) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("B lists %v, %v; A wrote version %s", l, err, r.GetVersion())
		}
	}
	if err := a.Stop(t); err != nil {
		t.Fatalf("A's Run on shutdown: %v", err)
	}
	if _, err := bc.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "task", Value: "t-after", Ttl: durationpb.New(time.Hour)}); err != nil {
		t.Fatalf("a write through B after A stopped: %v", err)
	}
}
