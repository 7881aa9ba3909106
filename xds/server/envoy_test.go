package xdsserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/envoy/envoyconf"
	xdsclient "github.com/mandate-dev/mandate/xds/client"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// sample loads envoy/cp-resources, the listeners and clusters an Envoy
// started with envoy/xds-bootstrap.yaml fetches, checked by envoyconf.
func sample(t *testing.T) (map[string]*listenerv3.Listener, map[string]*clusterv3.Cluster) {
	t.Helper()
	r, err := envoyconf.LoadDir("../../envoy/cp-resources")
	if err != nil {
		t.Fatal(err)
	}
	ls, cs := map[string]*listenerv3.Listener{}, map[string]*clusterv3.Cluster{}
	for _, l := range r.Listeners {
		ls[l.GetName()] = l
	}
	for _, c := range r.Clusters {
		cs[c.GetName()] = c
	}
	if len(ls) == 0 || len(cs) == 0 {
		t.Fatal("sample has no listeners or clusters")
	}
	return ls, cs
}

func envoyStatus(t *testing.T, srv *Server, node string) ReplicaStatus {
	t.Helper()
	for _, r := range srv.EnvoyStatus() {
		if r.NodeID == node {
			return r
		}
	}
	t.Fatalf("no Envoy status for node %q", node)
	return ReplicaStatus{}
}

// TestEnvoyDeltaADS acts as Envoy started with xds-bootstrap.yaml: one
// delta ADS stream, node id on the first message only, legacy wildcard
// subscriptions to CDS then LDS, ACK and NACK.
func TestEnvoyDeltaADS(t *testing.T) {
	h := start(t)
	ls, cs := sample(t)
	lv, err := h.srv.SetListeners(ls)
	if err != nil || lv != "1" {
		t.Fatalf("SetListeners: %q %v", lv, err)
	}
	cv, err := h.srv.SetClusters(cs)
	if err != nil || cv != "1" {
		t.Fatalf("SetClusters: %q %v", cv, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := h.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	node := &core.Node{Id: "tickets-api-sidecar", Cluster: "tickets-api"}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: ClusterTypeURL}); err != nil {
		t.Fatal(err)
	}
	r := recvDelta(t, st)
	if r.GetTypeUrl() != ClusterTypeURL || r.GetSystemVersionInfo() != cv || len(r.GetResources()) != len(cs) {
		t.Fatalf("CDS response: type %s version %q %d resources", r.GetTypeUrl(), r.GetSystemVersionInfo(), len(r.GetResources()))
	}
	for _, res := range r.GetResources() {
		c := &clusterv3.Cluster{}
		if err := res.GetResource().UnmarshalTo(c); err != nil || !proto.Equal(c, cs[res.GetName()]) {
			t.Fatalf("cluster %s differs from the one set (%v)", res.GetName(), err)
		}
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: ClusterTypeURL, ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: ListenerTypeURL}); err != nil {
		t.Fatal(err)
	}
	r = recvDelta(t, st)
	if r.GetTypeUrl() != ListenerTypeURL || r.GetSystemVersionInfo() != lv || len(r.GetResources()) != 1 {
		t.Fatalf("LDS response: type %s version %q %d resources", r.GetTypeUrl(), r.GetSystemVersionInfo(), len(r.GetResources()))
	}
	l := &listenerv3.Listener{}
	if err := r.GetResources()[0].GetResource().UnmarshalTo(l); err != nil || !proto.Equal(l, ls["inbound_mtls"]) {
		t.Fatalf("listener differs from the one set (%v)", err)
	}
	// What Envoy receives still passes Mandate's listener rules.
	if err := envoyconf.CheckListener(l); err != nil {
		t.Fatalf("served listener: %v", err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: ListenerTypeURL, ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	for typ, v := range map[string]string{ListenerTypeURL: lv, ClusterTypeURL: cv} {
		if err := h.srv.WaitAcked(wctx, typ, v); err != nil {
			t.Fatalf("WaitAcked(%s): %v", typ, err)
		}
	}
	es := envoyStatus(t, h.srv, "tickets-api-sidecar")
	if es.Kind != NodeEnvoy || !es.Connected || es.Types[ListenerTypeURL].AckedVersion != "1" || es.Types[ClusterTypeURL].AckedVersion != "1" {
		t.Fatalf("Envoy status: %+v", es)
	}
	if len(h.srv.Status()) != 0 {
		t.Fatalf("an Envoy is listed among replicas: %+v", h.srv.Status())
	}
	if got := metricValue(t, h.srv.m.envoys); got != 1 {
		t.Fatalf("connected_envoys %v, want 1", got)
	}
	if got := metricValue(t, h.srv.m.connected); got != 0 {
		t.Fatalf("connected_replicas %v, want 0", got)
	}

	// A changed listener travels as a delta; Envoy NACKs it.
	l2 := proto.Clone(ls["inbound_mtls"]).(*listenerv3.Listener)
	l2.ListenerFiltersTimeout = durationpb.New(time.Second)
	lv2, err := h.srv.SetListeners(map[string]*listenerv3.Listener{"inbound_mtls": l2})
	if err != nil || lv2 != "2" {
		t.Fatalf("second SetListeners: %q %v", lv2, err)
	}
	r = recvDelta(t, st)
	if r.GetSystemVersionInfo() != "2" || len(r.GetResources()) != 1 {
		t.Fatalf("LDS update: version %q resources %d", r.GetSystemVersionInfo(), len(r.GetResources()))
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: ListenerTypeURL, ResponseNonce: r.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "listener inbound_mtls: port in use"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "Envoy NACK recorded", func() bool {
		return envoyStatus(t, h.srv, "tickets-api-sidecar").Types[ListenerTypeURL].NackedVersion == "2"
	})
	if ts := envoyStatus(t, h.srv, "tickets-api-sidecar").Types[ListenerTypeURL]; ts.AckedVersion != "1" || !strings.Contains(ts.NackError, "port in use") {
		t.Fatalf("status after NACK: %+v", ts)
	}
	if got := metricValue(t, h.srv.m.nacks.WithLabelValues("Listener")); got != 1 {
		t.Fatalf("nacks{type=Listener} %v, want 1", got)
	}

	// An Envoy may not fetch Mandate's resources.
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: mandatev1.RevocationTypeURL}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := st.Recv()
		if err == nil {
			continue // responses already queued
		}
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("Envoy asking for revocations: %v, want PermissionDenied", err)
		}
		break
	}
}

// TestEnvoySotW serves CDS to a state-of-the-world ADS stream.
func TestEnvoySotW(t *testing.T) {
	h := start(t)
	_, cs := sample(t)
	if _, err := h.srv.SetClusters(cs); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := h.ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "edge-1"}, TypeUrl: ClusterTypeURL}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetVersionInfo() != "1" || len(r.GetResources()) != len(cs) {
		t.Fatalf("SotW CDS: version %q %d resources", r.GetVersionInfo(), len(r.GetResources()))
	}
	if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: ClusterTypeURL, VersionInfo: "1", ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := h.srv.WaitAcked(wctx, ClusterTypeURL, "1"); err != nil {
		t.Fatal(err)
	}
	if got := envoyStatus(t, h.srv, "edge-1").Types[ClusterTypeURL].AckedVersion; got != "1" {
		t.Fatalf("SotW Envoy acked %q", got)
	}
	if v := h.srv.EnvoyVersions(); v[ClusterTypeURL] != "1" || v[ListenerTypeURL] != "0" || len(v) != 2 {
		t.Fatalf("EnvoyVersions %v", v)
	}
	if _, ok := h.srv.Versions()[ClusterTypeURL]; ok || len(h.srv.Versions()) != len(mandatev1.TypeURLs()) {
		t.Fatalf("Versions lists Envoy types: %v", h.srv.Versions())
	}
}

// TestReplicaUnaffectedByEnvoys runs the real replica client next to a
// connected Envoy that never answers: the replica syncs, Mandate types'
// WaitAcked does not wait for the Envoy, and a replica stream may not
// fetch Envoy types.
func TestReplicaUnaffectedByEnvoys(t *testing.T) {
	h := start(t)
	ls, cs := sample(t)
	if _, err := h.srv.SetListeners(ls); err != nil {
		t.Fatal(err)
	}
	if _, err := h.srv.SetClusters(cs); err != nil {
		t.Fatal(err)
	}
	rv, err := h.srv.SetRevocations(revs("r1"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// An Envoy that subscribes and never ACKs.
	est, err := h.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := est.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "silent-envoy"}, TypeUrl: ListenerTypeURL}); err != nil {
		t.Fatal(err)
	}
	recvDelta(t, est)

	applied := make(chan xdsclient.State, 16)
	c, err := xdsclient.New(xdsclient.Config{Conn: h.conn, NodeID: "replica-1", Logger: slog.New(slog.DiscardHandler),
		Apply: func(s xdsclient.State) error { applied <- s; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- c.Run(ctx) }()
	// WaitAcked with no replica connected returns at once: wait for it.
	waitFor(t, "replica connected", func() bool { return len(h.srv.Status()) == 1 })
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := h.srv.WaitAcked(wctx, mandatev1.RevocationTypeURL, rv); err != nil {
		t.Fatalf("WaitAcked(revocations) with an Envoy connected: %v", err)
	}
	waitFor(t, "replica synced", c.Synced)
	var last xdsclient.State
	for len(applied) > 0 {
		last = <-applied
	}
	if last.Revocations == nil || last.Versions[mandatev1.RevocationTypeURL] != rv {
		t.Fatalf("replica state: %+v", last.Versions)
	}
	for typ := range last.Versions {
		if KindOf(typ) != NodeReplica {
			t.Fatalf("replica applied %s", typ)
		}
	}
	rs := replica(t, h.srv, "replica-1")
	if rs.Kind != NodeReplica || rs.Types[mandatev1.RevocationTypeURL].AckedVersion != rv {
		t.Fatalf("replica status: %+v", rs)
	}
	for typ := range rs.Types {
		if KindOf(typ) != NodeReplica {
			t.Fatalf("replica status has %s", typ)
		}
	}
	if len(h.srv.Status()) != 1 || len(h.srv.EnvoyStatus()) != 1 {
		t.Fatalf("status: replicas %+v Envoys %+v", h.srv.Status(), h.srv.EnvoyStatus())
	}
	// Listener WaitAcked waits for the silent Envoy, not for the replica.
	short, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	err = h.srv.WaitAcked(short, ListenerTypeURL, "1")
	scancel()
	if err == nil || !strings.Contains(err.Error(), "silent-envoy") || strings.Contains(err.Error(), "replica-1") {
		t.Fatalf("WaitAcked(listeners): %v, want a timeout naming silent-envoy only", err)
	}

	// A replica stream asking for Envoy types is refused.
	rst, err := h.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rst.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "replica-2"}, TypeUrl: mandatev1.PolicyTypeURL}); err != nil {
		t.Fatal(err)
	}
	recvDelta(t, rst)
	if err := rst.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: ClusterTypeURL}); err != nil {
		t.Fatal(err)
	}
	if _, err := rst.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("replica asking for clusters: %v, want PermissionDenied", err)
	}
	cancel()
	if err := <-runDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("replica client: %v", err)
	}
}

// TestPeerKind classifies streams by peer identity: an Envoy identity may
// not fetch Mandate types even on its first request, a replica identity
// not Envoy types, and a classifier error refuses the stream.
func TestPeerKind(t *testing.T) {
	tests := []struct {
		name    string
		kind    NodeKind
		err     error
		typeURL string
		want    codes.Code
	}{
		{"envoy fetches listeners", NodeEnvoy, nil, ListenerTypeURL, codes.OK},
		{"envoy fetches policies", NodeEnvoy, nil, mandatev1.PolicyTypeURL, codes.PermissionDenied},
		{"replica fetches policies", NodeReplica, nil, mandatev1.PolicyTypeURL, codes.OK},
		{"replica fetches clusters", NodeReplica, nil, ClusterTypeURL, codes.PermissionDenied},
		{"unknown identity", NodeUnknown, errors.New("peer spiffe://example.org/x matches no role"), ListenerTypeURL, codes.PermissionDenied},
		{"type not served", NodeEnvoy, nil, "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, WithPeerKind(func(context.Context) (NodeKind, error) { return tt.kind, tt.err }))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st, err := h.ads.DeltaAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// A refused stream may be closed before the request is sent:
			// Send then says io.EOF and Recv has the status.
			if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "n"}, TypeUrl: tt.typeURL}); err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			_, err = st.Recv()
			if status.Code(err) != tt.want {
				t.Fatalf("recv: %v, want %v", err, tt.want)
			}
		})
	}
	if _, err := New(testLogger(t), WithPeerKind(nil)); err == nil {
		t.Fatal("New accepted a nil classifier")
	}
}

// TestNodeIDKindConflict: one node id cannot be a replica and an Envoy at
// the same time.
func TestNodeIDKindConflict(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a, err := h.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "same"}, TypeUrl: mandatev1.PolicyTypeURL}); err != nil {
		t.Fatal(err)
	}
	recvDelta(t, a)
	b, err := h.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "same"}, TypeUrl: ListenerTypeURL}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("second stream as an Envoy: %v, want PermissionDenied", err)
	}
	if len(h.srv.EnvoyStatus()) != 0 || replica(t, h.srv, "same").Streams != 1 {
		t.Fatalf("status after conflict: %+v %+v", h.srv.Status(), h.srv.EnvoyStatus())
	}
}
