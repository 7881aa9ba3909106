package fleet

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/internal/etcdtest"
	"github.com/mandate-dev/mandate/internal/testcert"
	"github.com/mandate-dev/mandate/internal/transport"
	xdsclient "github.com/mandate-dev/mandate/xds/client"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

const ttl = 2 * time.Second

var prefixes atomic.Int64

func freshPrefix() string { return fmt.Sprintf("/fleet-test-%d/", prefixes.Add(1)) }

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func etcdClient(t testing.TB, c *etcdtest.Cluster) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// instance is one mandate-cp as far as the fleet goes: an xDS server
// over mTLS and its presence in etcd.
type instance struct {
	name string
	xs   *xdsserver.Server
	addr string
	pr   *Presence
}

func startInstance(t testing.TB, c *etcdtest.Cluster, ca *testcert.CA, prefix, name string) *instance {
	t.Helper()
	xs, err := xdsserver.New(quiet())
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(transport.ServerCredentials(ca.SVID(t, "spiffe://example.org/mandate/cp"), ca.Bundle(), tlsconfig.AuthorizeAny())))
	xs.Register(g)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(func() { xs.Close(); g.Stop() })
	pr, err := StartPresence(context.Background(), PresenceConfig{Client: etcdClient(t, c), Prefix: prefix,
		Instance: name, TTL: ttl, Source: xs, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pr.Close() })
	return &instance{name: name, xs: xs, addr: lis.Addr().String(), pr: pr}
}

// kill stops publishing without giving the lease back, as when the
// process dies: its record stays until the lease expires.
func (in *instance) kill() {
	in.pr.cancel()
	in.pr.done.Wait()
	in.pr.mu.Lock()
	in.pr.lease = 0
	in.pr.mu.Unlock()
}

// replica runs a real xDS client (a mandate-authz replica's) against in
// as the SPIFFE ID id with node id node.
func replica(t testing.TB, ca *testcert.CA, in *instance, id, node string) {
	t.Helper()
	creds := credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, id)}, InsecureSkipVerify: true}) //nolint:gosec // test: identity is checked server-side
	cl, err := xdsclient.New(xdsclient.Config{Target: in.addr, DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(creds)},
		NodeID: node, Logger: quiet(), Apply: func(xdsclient.State) error { return nil }, Heartbeat: -1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = cl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; _ = cl.Close() })
}

func setRevocations(t testing.TB, in *instance, version uint64, names ...string) {
	t.Helper()
	res := map[string]proto.Message{}
	for _, n := range names {
		res[n] = &mandatev1.Revocation{Name: n, Kind: "task", Value: "task-" + n, Expires: timestamppb.New(time.Now().Add(time.Hour))}
	}
	if _, err := in.xs.SetAt(mandatev1.RevocationTypeURL, version, res); err != nil {
		t.Fatal(err)
	}
}

func wait(t *testing.T, v View, version uint64, d time.Duration) (int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return WaitAcked(ctx, v, mandatev1.RevocationTypeURL, version)
}

const authz = "spiffe://example.org/mandate/authz/"

// connected waits until v sees n connected node rows.
func connected(t testing.TB, v View, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ch := v.Changed()
		ns, _ := v.Nodes()
		c := 0
		for _, x := range ns {
			if x.Connected {
				c++
			}
		}
		if c == n {
			return
		}
		select {
		case <-ch:
		case <-time.After(time.Until(deadline)):
			t.Fatalf("%d connected nodes, want %d: %+v", c, n, ns)
		}
	}
}

// TestWaitCountsEveryInstancesReplicas: two instances on one etcd, a
// replica on each. A wait on either instance counts both replicas (the
// instance's own xDS server alone sees one), lasts until the replica on
// the other instance ACKed too, and a replica whose instance died leaves
// the count once the instance's lease expired.
func TestWaitCountsEveryInstancesReplicas(t *testing.T) {
	c := etcdtest.Start(t, 3)
	ca := testcert.NewCA(t, "example.org")
	prefix := freshPrefix()
	a := startInstance(t, c, ca, prefix, "cp-a")
	b := startInstance(t, c, ca, prefix, "cp-b")
	replica(t, ca, a, authz+"r1", "r1")
	replica(t, ca, b, authz+"r2", "r2")

	connected(t, a.pr, 2)
	connected(t, b.pr, 2)
	setRevocations(t, a, 100, "x")
	setRevocations(t, b, 100, "x")
	for _, in := range []*instance{a, b} {
		if n, err := wait(t, in.pr, 100, 20*time.Second); err != nil || n != 2 {
			t.Fatalf("wait on %s: %d replicas, %v; want 2", in.name, n, err)
		}
	}
	// What the instance alone knows (the wait before the fleet view).
	if n, err := a.xs.WaitAckedOrRejected(context.Background(), mandatev1.RevocationTypeURL, "100"); err != nil || n != 1 {
		t.Fatalf("local wait on cp-a: %d %v, want the one local replica", n, err)
	}

	// Version 200 reaches cp-a only: the wait on cp-a must not pass
	// while r2 (on cp-b) has not ACKed it.
	setRevocations(t, a, 200, "x", "y")
	_, err := wait(t, a.pr, 200, 500*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "r2 (on cp-b)") {
		t.Fatalf("wait for 200 while r2 lags: %v, want it to name r2 on cp-b", err)
	}
	setRevocations(t, b, 200, "x", "y")
	if n, err := wait(t, a.pr, 200, 20*time.Second); err != nil || n != 2 {
		t.Fatalf("wait for 200 on cp-a: %d %v, want 2", n, err)
	}
	nodes, err := a.pr.Nodes()
	if err != nil || len(nodes) != 2 || nodes[0].Instance != "cp-a" || nodes[1].Instance != "cp-b" ||
		nodes[1].Peer != authz+"r2" {
		t.Fatalf("nodes seen from cp-a: %+v, %v", nodes, err)
	}

	// cp-b dies (no goodbye): until its lease expires its replica still
	// counts; then it is gone from cp-a's view.
	killed := time.Now()
	b.kill()
	deadline := killed.Add(ttl + 3*time.Second)
	for {
		ns, _ := a.pr.Nodes()
		if len(ns) == 1 && ns[0].NodeID == "r1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cp-b's replica still in cp-a's view %v after it died (lease %v)", time.Since(killed), ttl)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("a dead instance's replicas left the view %v after it died (lease TTL %v)", time.Since(killed).Round(time.Millisecond), ttl)
	setRevocations(t, a, 300, "x", "y", "z")
	if n, err := wait(t, a.pr, 300, 20*time.Second); err != nil || n != 1 {
		t.Fatalf("wait for 300 after cp-b died: %d %v, want 1", n, err)
	}
}

// TestNodeIDOnTwoInstancesIsOneReplica: one node id connected to two
// instances from two peers (a replica, and a rogue reusing its node id
// where the binding of the first instance does not reach) is one
// replica, and ACKed only when it ACKed on both: the rogue's ACK never
// stands for the real replica, nor counts as a second one.
func TestNodeIDOnTwoInstancesIsOneReplica(t *testing.T) {
	c := etcdtest.Start(t, 3)
	ca := testcert.NewCA(t, "example.org")
	prefix := freshPrefix()
	a := startInstance(t, c, ca, prefix, "cp-a")
	b := startInstance(t, c, ca, prefix, "cp-b")
	replica(t, ca, a, authz+"r1", "shared")
	replica(t, ca, b, authz+"rogue", "shared")
	connected(t, a.pr, 2)
	setRevocations(t, a, 100, "x")
	setRevocations(t, b, 100, "x")
	if n, err := wait(t, a.pr, 100, 20*time.Second); err != nil || n != 1 {
		t.Fatalf("wait for 100: %d %v, want one replica", n, err)
	}
	// The rogue on cp-b ACKs 200; the replica on cp-a never got it.
	setRevocations(t, b, 200, "x", "y")
	for _, in := range []*instance{a, b} {
		if n, err := wait(t, in.pr, 200, 700*time.Millisecond); err == nil {
			t.Fatalf("wait for 200 on %s passed (%d) on the rogue's ACK alone", in.name, n)
		}
	}
	setRevocations(t, a, 200, "x", "y")
	if n, err := wait(t, b.pr, 200, 20*time.Second); err != nil || n != 1 {
		t.Fatalf("wait for 200: %d %v, want one replica", n, err)
	}
	nodes, _ := b.pr.Nodes()
	peers := map[string]string{}
	for _, n := range nodes {
		peers[n.Instance] = n.Peer
	}
	if len(nodes) != 2 || peers["cp-a"] != authz+"r1" || peers["cp-b"] != authz+"rogue" {
		t.Fatalf("status rows %+v: want the node on each instance with its own peer", nodes)
	}
}

// TestWaitNeverMissesAnAck: many versions in a row, each waited for
// through the other instance. Before, an ACK that came while the
// publisher woke for its lease's keep-alive was never published, and the
// wait hung until its deadline (within a few hundred rounds).
func TestWaitNeverMissesAnAck(t *testing.T) {
	c := etcdtest.Start(t, 3)
	ca := testcert.NewCA(t, "example.org")
	prefix := freshPrefix()
	a := startInstance(t, c, ca, prefix, "cp-a")
	b := startInstance(t, c, ca, prefix, "cp-b")
	replica(t, ca, b, authz+"r2", "r2")
	connected(t, a.pr, 1)
	deadline := time.Now().Add(8 * time.Second)
	v := uint64(10)
	for time.Now().Before(deadline) {
		v++
		setRevocations(t, b, v, "x")
		if n, err := wait(t, a.pr, v, 5*time.Second); err != nil || n != 1 {
			t.Fatalf("round %d: %d %v", v-10, n, err)
		}
	}
	t.Logf("%d versions, each seen ACKed through the other instance", v-10)
}
