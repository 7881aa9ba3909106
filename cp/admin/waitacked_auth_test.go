package admin

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/internal/testcert"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TestWaitAckedOpenToAdmittedPeers: an orchestrator that completed a task
// may wait for the revocation to propagate, but still may not revoke.
func TestWaitAckedOpenToAdmittedPeers(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ca := testcert.NewCA(t, "example.org")
	serve(t, lis, spiffeServer(t, ca), AuthConfig{Operators: []string{"spiffe://example.org/mandate/operator"}})
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(clientWith(t, ca, "spiffe://example.org/orchestrator")))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	c := mandatev1.NewAdminClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.WaitAcked(ctx, &mandatev1.WaitAckedRequest{TypeUrl: mandatev1.RevocationTypeURL, Version: "0"}); err != nil {
		t.Fatalf("WaitAcked by a non-operator: %v", err)
	}
	if _, err := c.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "task", Value: "t", Ttl: durationpb.New(time.Hour)}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Revoke by a non-operator: %v, want PermissionDenied", err)
	}
}
