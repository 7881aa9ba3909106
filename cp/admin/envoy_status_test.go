package admin

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
	"github.com/mandate-dev/mandate/internal/testcert"
	"github.com/mandate-dev/mandate/internal/transport"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// classifyPeer sorts xDS peers by the SPIFFE ID of their client
// certificate, as mandate-cp does with --replica-id and --envoy-id.
func classifyPeer(ctx context.Context) (xdsserver.NodeKind, error) {
	id, err := transport.PeerID(ctx)
	if err != nil {
		return xdsserver.NodeUnknown, err
	}
	switch s := id.String(); {
	case s == "spiffe://example.org/mandate/authz", strings.HasPrefix(s, "spiffe://example.org/mandate/authz/"):
		return xdsserver.NodeReplica, nil
	case strings.HasPrefix(s, "spiffe://example.org/envoy/"):
		return xdsserver.NodeEnvoy, nil
	}
	return xdsserver.NodeUnknown, errors.New("unknown peer " + id.String())
}

type envoyHarness struct {
	p     *plane.Plane
	clock *testClock
	admin mandatev1.AdminClient
	xds   string // xDS server address (mTLS)
	ca    *testcert.CA
}

func startEnvoyHarness(t *testing.T) *envoyHarness {
	t.Helper()
	ctx := context.Background()
	clock := &testClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	st, err := boltstore.Open(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	xs, err := xdsserver.New(discard(), xdsserver.WithPeerKind(classifyPeer))
	if err != nil {
		t.Fatal(err)
	}
	p, err := plane.New(ctx, st, xs, discard(), plane.WithClock(clock.now))
	if err != nil {
		t.Fatal(err)
	}
	xlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ca := testcert.NewCA(t, "example.org")
	xg := grpc.NewServer(grpc.Creds(spiffeServer(t, ca)))
	xs.Register(xg)
	go func() { _ = xg.Serve(xlis) }()

	alis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	auth, err := NewAuth(AuthConfig{AllowPlaintext: true, UID: os.Getuid()})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := New(p, discard())
	if err != nil {
		t.Fatal(err)
	}
	ag := grpc.NewServer(grpc.Creds(insecure.NewCredentials()), grpc.UnaryInterceptor(auth.Unary()))
	mandatev1.RegisterAdminServer(ag, svc)
	go func() { _ = ag.Serve(alis) }()
	cc, err := grpc.NewClient(alis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close(); ag.Stop(); xg.Stop(); xs.Close(); _ = st.Close() })
	return &envoyHarness{p: p, clock: clock, admin: mandatev1.NewAdminClient(cc), xds: xlis.Addr().String(), ca: ca}
}

// deltaStream opens a delta ADS stream to the xDS server as id.
func (h *envoyHarness) deltaStream(ctx context.Context, t *testing.T, id string) discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
	t.Helper()
	cc, err := grpc.NewClient(h.xds, grpc.WithTransportCredentials(clientWith(t, h.ca, id)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	st, err := discovery.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// fetch subscribes to typeURL (with node on the stream's first message),
// checks the version received and answers it: ACK, or NACK with nack.
func fetch(t *testing.T, st discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient, node *core.Node, typeURL, version, nack string) {
	t.Helper()
	if typeURL != "" {
		if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: typeURL}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetSystemVersionInfo() != version {
		t.Fatalf("%s: got version %q, want %q", r.GetTypeUrl(), r.GetSystemVersionInfo(), version)
	}
	ack := &discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()}
	if nack != "" {
		ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: nack}
	}
	if err := st.Send(ack); err != nil {
		t.Fatal(err)
	}
}

func statusOf(t *testing.T, nodes []*mandatev1.ReplicaStatus, id string) map[string]*mandatev1.ReplicaTypeStatus {
	t.Helper()
	for _, n := range nodes {
		if n.GetNodeId() == id {
			out := map[string]*mandatev1.ReplicaTypeStatus{}
			for _, ts := range n.GetTypes() {
				out[ts.GetTypeUrl()] = ts
			}
			if !n.GetConnected() {
				t.Fatalf("node %s not connected", id)
			}
			return out
		}
	}
	t.Fatalf("node %s not listed in %v", id, nodes)
	return nil
}

// TestStatusListsEnvoys: an Envoy fetching LDS/CDS is reported apart from
// the replicas, with its Listener and Cluster ACKs, NACK and lag.
func TestStatusListsEnvoys(t *testing.T) {
	h := startEnvoyHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	st, err := h.admin.Status(ctx, &mandatev1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetEnvoys()) != 0 || st.GetEnvoyVersions()[xdsserver.ListenerTypeURL] != "0" || st.GetEnvoyVersions()[xdsserver.ClusterTypeURL] != "0" {
		t.Fatalf("before anything: envoys %v, versions %v", st.GetEnvoys(), st.GetEnvoyVersions())
	}

	if _, err := h.p.ApplyPolicies(ctx, []*mandatev1.Policy{{Name: "reader", Source: []byte(goodPolicy)}}, "test"); err != nil {
		t.Fatal(err)
	}
	if v, err := h.p.SetListeners(map[string]*listenerv3.Listener{"inbound": {Name: "inbound"}}); err != nil || v != "1" {
		t.Fatalf("SetListeners: %q %v", v, err)
	}
	if v, err := h.p.SetClusters(map[string]*clusterv3.Cluster{"authz": {Name: "authz"}}); err != nil || v != "1" {
		t.Fatalf("SetClusters: %q %v", v, err)
	}

	rep := h.deltaStream(ctx, t, "spiffe://example.org/mandate/authz")
	fetch(t, rep, &core.Node{Id: "authz-1"}, mandatev1.PolicyTypeURL, "1", "")
	env := h.deltaStream(ctx, t, "spiffe://example.org/envoy/tickets")
	envNode := &core.Node{Id: "tickets-api-sidecar", Cluster: "tickets-api"}
	fetch(t, env, envNode, xdsserver.ClusterTypeURL, "1", "")
	fetch(t, env, nil, xdsserver.ListenerTypeURL, "1", "")
	if n, err := h.p.WaitAcked(ctx, mandatev1.PolicyTypeURL, "1"); err != nil || n != 1 {
		t.Fatalf("WaitAcked policy 1: %d replicas, %v", n, err)
	}
	waitUntil(t, "both ACKs of the Envoy", func() bool {
		es := h.p.EnvoyStatus()
		return len(es) == 1 && es[0].Types[xdsserver.ListenerTypeURL].AckedVersion == "1" && es[0].Types[xdsserver.ClusterTypeURL].AckedVersion == "1"
	})

	st, err = h.admin.Status(ctx, &mandatev1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetReplicas()) != 1 || st.GetReplicas()[0].GetNodeId() != "authz-1" {
		t.Fatalf("replicas %v, want authz-1 only", st.GetReplicas())
	}
	if len(st.GetEnvoys()) != 1 || st.GetEnvoys()[0].GetNodeId() != "tickets-api-sidecar" {
		t.Fatalf("envoys %v, want tickets-api-sidecar only", st.GetEnvoys())
	}
	if _, ok := st.GetVersions()[xdsserver.ListenerTypeURL]; ok {
		t.Fatalf("replica versions carry the Listener type: %v", st.GetVersions())
	}
	if ev := st.GetEnvoyVersions(); len(ev) != 2 || ev[xdsserver.ListenerTypeURL] != "1" || ev[xdsserver.ClusterTypeURL] != "1" {
		t.Fatalf("envoy versions %v", ev)
	}
	types := statusOf(t, st.GetEnvoys(), "tickets-api-sidecar")
	if len(types) != 2 {
		t.Fatalf("Envoy types %v, want Listener and Cluster only", types)
	}
	for _, typ := range xdsserver.EnvoyTypeURLs() {
		if ts := types[typ]; ts.GetAckedVersion() != "1" || ts.GetNackedVersion() != "" || ts.GetLag().AsDuration() != 0 {
			t.Fatalf("Envoy %s: %v", typ, ts)
		}
	}
	if rt := statusOf(t, st.GetReplicas(), "authz-1"); rt[mandatev1.PolicyTypeURL].GetAckedVersion() != "1" || rt[xdsserver.ListenerTypeURL] != nil {
		t.Fatalf("replica types %v", rt)
	}

	// A new listener the Envoy rejects: NACK and lag (counted from the
	// commit, not from the start) show, Cluster stays current.
	h.clock.advance(time.Minute)
	if v, err := h.p.SetListeners(map[string]*listenerv3.Listener{"inbound": {Name: "inbound",
		ListenerFiltersTimeout: durationpb.New(time.Second)}}); err != nil || v != "2" {
		t.Fatalf("second SetListeners: %q %v", v, err)
	}
	h.clock.advance(7 * time.Second)
	fetch(t, env, nil, "", "2", "listener inbound: port in use")
	waitUntil(t, "the Envoy's NACK", func() bool {
		es := h.p.EnvoyStatus()
		return len(es) == 1 && es[0].Types[xdsserver.ListenerTypeURL].NackedVersion == "2"
	})
	st, err = h.admin.Status(ctx, &mandatev1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetEnvoyVersions()[xdsserver.ListenerTypeURL] != "2" {
		t.Fatalf("envoy versions %v", st.GetEnvoyVersions())
	}
	types = statusOf(t, st.GetEnvoys(), "tickets-api-sidecar")
	l, c := types[xdsserver.ListenerTypeURL], types[xdsserver.ClusterTypeURL]
	if l.GetAckedVersion() != "1" || l.GetNackedVersion() != "2" || !strings.Contains(l.GetNackError(), "port in use") ||
		l.GetLag().AsDuration() != 7*time.Second {
		t.Fatalf("Listener after NACK: %v", l)
	}
	if c.GetAckedVersion() != "1" || c.GetLag().AsDuration() != 0 {
		t.Fatalf("Cluster after the Listener NACK: %v", c)
	}
	if len(st.GetReplicas()) != 1 || len(st.GetEnvoys()) != 1 {
		t.Fatalf("%d replicas, %d envoys", len(st.GetReplicas()), len(st.GetEnvoys()))
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
