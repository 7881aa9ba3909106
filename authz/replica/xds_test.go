package replica

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/internal/envoyreq"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// TestControlPlaneMode runs a replica against a real xDS server: not
// ready and denying before the first sync, deciding after it, and a
// revocation denies from the moment the server sees it ACKed.
func TestControlPlaneMode(t *testing.T) {
	xs, err := xdsserver.New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	xs.Register(gs)
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()

	cfg := testConfig()
	cfg.XDSServers, cfg.NodeID = []string{lis.Addr().String()}, "replica-1"
	r := startReplica(t, cfg, quiet())
	addrs := r.addrs
	ctx := context.Background()
	conn, err := grpc.NewClient(addrs["grpc"], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := authv3.NewAuthorizationClient(conn)
	check := func() codes.Code {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		resp, err := c.Check(cctx, envoyreq.Build(envoyreq.Params{
			Principal: "spiffe://example.org/agent/a", Method: "GET", Path: "/x", Host: "h"}))
		if err != nil {
			t.Fatalf("Check RPC error: %v", err)
		}
		return codes.Code(resp.GetStatus().GetCode())
	}
	ready := func() int {
		resp, err := http.Get("http://" + addrs["metrics"] + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	// Nothing published yet: whether or not the empty sets have arrived,
	// nothing is allowed.
	if check() != codes.PermissionDenied {
		t.Fatal("replica allowed before any policy was published")
	}
	src := []byte("apiVersion: mandate.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  rules:\n    - {name: r, effect: allow, subjects: [\"spiffe://example.org/agent/*\"]}\n")
	pv, err := xs.SetPolicies(map[string]*mandatev1.Policy{"p": {Name: "p", Source: src, Version: mandatev1.PolicyVersion(src)}})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := xs.WaitAcked(wctx, mandatev1.PolicyTypeURL, pv); err != nil {
		t.Fatal(err)
	}
	// Every type has synced once (the server answers the subscription
	// with its empty sets): ready, and deciding on the new policy.
	poll(t, func() bool { return ready() == 200 })
	if check() != codes.OK {
		t.Fatal("replica that ACKed the policies denies an allowed request")
	}

	v, err := xs.SetRevocations(map[string]*mandatev1.Revocation{"r1": {
		Name: "r1", Kind: "subject", Value: "spiffe://example.org/agent/a",
		Expires: timestamppb.New(time.Now().Add(time.Hour)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := xs.WaitAcked(wctx, mandatev1.RevocationTypeURL, v); err != nil {
		t.Fatal(err)
	}
	// ACKed means enforced: the very next request is denied.
	if check() != codes.PermissionDenied {
		t.Fatal("allowed after the replica ACKed a revocation")
	}
	if err := r.Stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func poll(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 20s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
