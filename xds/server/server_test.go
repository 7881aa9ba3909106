package xdsserver

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type harness struct {
	srv  *Server
	reg  *prometheus.Registry
	conn *grpc.ClientConn
	ads  discovery.AggregatedDiscoveryServiceClient
}

func start(t *testing.T, opts ...Option) *harness {
	t.Helper()
	reg := prometheus.NewRegistry()
	srv, err := New(testLogger(t), append([]Option{WithRegisterer(reg)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	srv.Register(g)
	go func() { _ = g.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		srv.Close()
		g.Stop()
	})
	return &harness{srv: srv, reg: reg, conn: conn, ads: discovery.NewAggregatedDiscoveryServiceClient(conn)}
}

var revExpiry = time.Now().Add(time.Hour)

func rev(name string) *mandatev1.Revocation {
	return &mandatev1.Revocation{Name: name, Kind: "task", Value: "task-" + name,
		Expires: timestamppb.New(revExpiry)}
}

func revs(names ...string) map[string]*mandatev1.Revocation {
	m := map[string]*mandatev1.Revocation{}
	for _, n := range names {
		m[n] = rev(n)
	}
	return m
}

func recvDelta(t *testing.T, s discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient) *discovery.DeltaDiscoveryResponse {
	t.Helper()
	r, err := s.Recv()
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	return r
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func replica(t *testing.T, srv *Server, node string) ReplicaStatus {
	t.Helper()
	for _, r := range srv.Status() {
		if r.NodeID == node {
			return r
		}
	}
	t.Fatalf("no status for node %q", node)
	return ReplicaStatus{}
}

func TestAckNackTracking(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v1, err := h.srv.SetRevocations(revs("r1"))
	if err != nil || v1 != "1" {
		t.Fatalf("first set: version %q err %v, want 1", v1, err)
	}
	st, err := h.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "replica-a"},
		TypeUrl: mandatev1.RevocationTypeURL, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	r := recvDelta(t, st)
	if r.GetSystemVersionInfo() != "1" || len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != shardName("r1") {
		t.Fatalf("first response: version %q resources %v", r.GetSystemVersionInfo(), r.GetResources())
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: mandatev1.RevocationTypeURL, ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := h.srv.WaitAcked(wctx, mandatev1.RevocationTypeURL, v1); err != nil {
		t.Fatalf("WaitAcked(1): %v", err)
	}
	rs := replica(t, h.srv, "replica-a")
	if !rs.Connected || rs.Streams != 1 || rs.Types[mandatev1.RevocationTypeURL].AckedVersion != "1" || rs.ConnectedSince.IsZero() {
		t.Fatalf("status after ack: %+v", rs)
	}

	// NACK of version 2.
	v2, _ := h.srv.SetRevocations(revs("r1", "r2"))
	r = recvDelta(t, st)
	if r.GetSystemVersionInfo() != v2 || v2 != "2" || len(r.GetResources()) != 1 || r.GetResources()[0].GetName() != shardName("r2") {
		t.Fatalf("delta for v2: version %q resources %v", r.GetSystemVersionInfo(), r.GetResources())
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: mandatev1.RevocationTypeURL, ResponseNonce: r.GetNonce(),
		ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: `Revocation "r2": boom`}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "nack recorded", func() bool {
		return replica(t, h.srv, "replica-a").Types[mandatev1.RevocationTypeURL].NackedVersion == "2"
	})
	ts := replica(t, h.srv, "replica-a").Types[mandatev1.RevocationTypeURL]
	if ts.AckedVersion != "1" || !strings.Contains(ts.NackError, "boom") || ts.SentVersion != "2" {
		t.Fatalf("status after nack: %+v", ts)
	}
	if got := metricValue(t, h.srv.m.nacks.WithLabelValues("Revocation")); got != 1 {
		t.Fatalf("nacks metric %v, want 1", got)
	}
	short, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	err = h.srv.WaitAcked(short, mandatev1.RevocationTypeURL, v2)
	scancel()
	if err == nil || !strings.Contains(err.Error(), "replica-a") {
		t.Fatalf("WaitAcked(2) after NACK: %v, want timeout naming replica-a", err)
	}
	var rej *RejectedError
	if _, err := h.srv.WaitAckedOrRejected(ctx, mandatev1.RevocationTypeURL, v2); !errors.As(err, &rej) ||
		rej.Node != "replica-a" || rej.Version != "2" || !strings.Contains(rej.Message, "boom") {
		t.Fatalf("WaitAckedOrRejected(2) after NACK: %v, want the rejection by replica-a", err)
	}
	if n, err := h.srv.WaitAckedOrRejected(ctx, mandatev1.RevocationTypeURL, "1"); err != nil || n != 1 {
		t.Fatalf("WaitAckedOrRejected(1) = %d, %v; want 1 acked", n, err)
	}

	// Same content: no new version.
	if v, _ := h.srv.SetRevocations(revs("r1", "r2")); v != "2" {
		t.Fatalf("unchanged set gave version %q, want 2", v)
	}
	// A fixed version 3, ACKed, clears the NACK and satisfies waits for 2.
	done := make(chan error, 1)
	go func() { done <- h.srv.WaitAcked(wctx, mandatev1.RevocationTypeURL, "2") }()
	v3, _ := h.srv.SetRevocations(revs("r1", "r3"))
	r = recvDelta(t, st)
	if r.GetSystemVersionInfo() != v3 || len(r.GetRemovedResources()) != 1 || r.GetRemovedResources()[0] != shardName("r2") {
		t.Fatalf("delta for v3: version %q removed %v", r.GetSystemVersionInfo(), r.GetRemovedResources())
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: mandatev1.RevocationTypeURL, ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("WaitAcked(2) after ACK of 3: %v", err)
	}
	ts = replica(t, h.srv, "replica-a").Types[mandatev1.RevocationTypeURL]
	if ts.AckedVersion != "3" || ts.NackedVersion != "" || ts.NackError != "" {
		t.Fatalf("status after ack of 3: %+v", ts)
	}
	if n := metricValue(t, h.srv.m.propagation.WithLabelValues("Revocation").(prometheus.Metric)); n != 2 {
		t.Fatalf("propagation histogram has %v samples, want 2 (versions 1 and 3)", n)
	}
	if got := metricValue(t, h.srv.m.pushes.WithLabelValues("Revocation")); got != 3 {
		t.Fatalf("pushes %v, want 3", got)
	}
	if got := metricValue(t, h.srv.m.connected); got != 1 {
		t.Fatalf("connected gauge %v, want 1", got)
	}
	cancel()
	waitFor(t, "disconnect", func() bool { return !replica(t, h.srv, "replica-a").Connected })
	if got := metricValue(t, h.srv.m.connected); got != 0 {
		t.Fatalf("connected gauge %v after close, want 0", got)
	}
}

func TestInitialVersionAndSotW(t *testing.T) {
	h := start(t, WithInitialVersion(mandatev1.PolicyTypeURL, 41))
	src := []byte("apiVersion: mandate.dev/v1\n")
	v, err := h.srv.SetPolicies(map[string]*mandatev1.Policy{"p": {Name: "p", Source: src, Version: mandatev1.PolicyVersion(src)}})
	if err != nil || v != "42" {
		t.Fatalf("version %q err %v, want 42", v, err)
	}
	if got := h.srv.Versions()[mandatev1.PolicyTypeURL]; got != "42" {
		t.Fatalf("Versions() policy %q", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := h.ads.StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "sotw-1"}, TypeUrl: mandatev1.PolicyTypeURL}); err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetVersionInfo() != "42" || len(r.GetResources()) != 1 {
		t.Fatalf("sotw response version %q with %d resources", r.GetVersionInfo(), len(r.GetResources()))
	}
	var p mandatev1.Policy
	if err := r.GetResources()[0].UnmarshalTo(&p); err != nil || p.GetName() != "p" {
		t.Fatalf("sotw resource: %v %v", err, p.GetName())
	}
	if err := st.Send(&discovery.DiscoveryRequest{TypeUrl: mandatev1.PolicyTypeURL, VersionInfo: "42", ResponseNonce: r.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := h.srv.WaitAcked(wctx, mandatev1.PolicyTypeURL, "42"); err != nil {
		t.Fatal(err)
	}
	if got := replica(t, h.srv, "sotw-1").Types[mandatev1.PolicyTypeURL].AckedVersion; got != "42" {
		t.Fatalf("sotw acked %q", got)
	}
}

func TestStreamWithoutNodeIDRejected(t *testing.T) {
	h := start(t)
	st, err := h.ads.DeltaAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: mandatev1.RevocationTypeURL}); err != nil {
		t.Fatal(err)
	}
	_, err = st.Recv()
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("recv: %v, want InvalidArgument", err)
	}
	if len(h.srv.Status()) != 0 {
		t.Fatalf("status lists a replica without node id: %+v", h.srv.Status())
	}
}

func TestSetValidation(t *testing.T) {
	srv, err := New(testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	tests := []struct {
		name string
		set  func() (string, error)
		ok   bool
	}{
		{"key mismatch", func() (string, error) {
			return srv.SetRevocations(map[string]*mandatev1.Revocation{"a": rev("b")})
		}, false},
		{"nil resource", func() (string, error) { return srv.SetKeys(map[string]*mandatev1.VerificationKey{"k": nil}) }, false},
		{"empty name", func() (string, error) { return srv.SetApprovals(map[string]*mandatev1.Approval{"": {}}) }, false},
		{"empty set", func() (string, error) { return srv.SetApprovals(nil) }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.set()
			if (err == nil) != tt.ok {
				t.Fatalf("err %v, want ok=%v", err, tt.ok)
			}
		})
	}
	if err := srv.WaitAcked(context.Background(), mandatev1.ApprovalTypeURL, "7"); err != nil {
		t.Fatalf("WaitAcked with no replicas: %v", err)
	}
	if err := srv.WaitAcked(context.Background(), mandatev1.ApprovalTypeURL, "x"); err == nil {
		t.Fatal("WaitAcked accepted a non-numeric version")
	}
	if err := srv.WaitAcked(context.Background(), "type.googleapis.com/other", "1"); err == nil {
		t.Fatal("WaitAcked accepted an unknown type")
	}
	if _, err := New(testLogger(t), WithInitialVersion("nope", 1)); err == nil {
		t.Fatal("New accepted an unknown type URL")
	}
	if _, err := New(nil); err == nil {
		t.Fatal("New accepted a nil logger")
	}
}

// TestClosedStreamsLeakNothing opens and closes many delta and SotW
// streams (go-control-plane PR #570) and checks that no goroutine and no
// cache watch survives them.
func TestClosedStreamsLeakNothing(t *testing.T) {
	h := start(t)
	if _, err := h.srv.SetRevocations(revs("r1", "r2")); err != nil {
		t.Fatal(err)
	}
	// Warm the connection up so its own goroutines are in the baseline.
	warm, cancelWarm := context.WithCancel(context.Background())
	ws, err := h.ads.DeltaAggregatedResources(warm)
	if err != nil {
		t.Fatal(err)
	}
	_ = ws.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "warm"}, TypeUrl: mandatev1.RevocationTypeURL})
	recvDelta(t, ws)
	cancelWarm()
	waitFor(t, "warm stream closed", func() bool { return len(h.srv.Status()) == 1 && !h.srv.Status()[0].Connected })
	baseline := runtime.NumGoroutine()

	for i := 0; i < 60; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		st, err := h.ads.DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for j, typ := range mandatev1.TypeURLs() {
			req := &discovery.DeltaDiscoveryRequest{TypeUrl: typ, ResourceNamesSubscribe: []string{"*"}}
			if j == 0 {
				req.Node = &core.Node{Id: "leaky"}
			}
			if err := st.Send(req); err != nil {
				t.Fatal(err)
			}
		}
		for range mandatev1.TypeURLs() {
			r := recvDelta(t, st)
			if i%2 == 0 { // half the streams ACK, half leave responses unanswered
				_ = st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()})
			}
		}
		if i%3 == 0 { // an update racing the close
			_, _ = h.srv.SetRevocations(revs("r1", "r2", "x"+string(rune('a'+i%26))))
		}
		so, err := h.ads.StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_ = so.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "leaky-sotw"}, TypeUrl: mandatev1.RevocationTypeURL})
		if _, err := so.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	waitFor(t, "goroutines back to baseline", func() bool { return runtime.NumGoroutine() <= baseline+2 })
	// NumCacheWatches is not used: go-control-plane v0.14.0 decrements it
	// twice for a wildcard watch that fired and was then cancelled.
	waitFor(t, "no cache watch left", func() bool {
		for _, ts := range h.srv.types {
			if ts.cache.NumWildcardWatches() != 0 {
				return false
			}
		}
		return true
	})
	waitFor(t, "streams forgotten", func() bool {
		h.srv.mu.Lock()
		defer h.srv.mu.Unlock()
		return len(h.srv.streams) == 0
	})
	for _, r := range h.srv.Status() {
		if r.Connected || r.Streams != 0 {
			t.Fatalf("replica %s still connected after all streams closed: %+v", r.NodeID, r)
		}
	}
}
