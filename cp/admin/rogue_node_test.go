package admin

import (
	"context"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TestRogueNodeIDCannotAnswerForAReplica: a delta-ADS client reusing a
// replica's node id cannot make `--wait` (WaitAcked) believe the replica
// enforces a revocation it never received. From another SPIFFE ID its
// stream is refused; with the same (shared) SVID its ACK does not count
// for the real replica's stream, so the wait fails instead of passing.
func TestRogueNodeIDCannotAnswerForAReplica(t *testing.T) {
	const realID = "spiffe://example.org/mandate/authz/r1"
	tests := []struct {
		name    string
		rogueID string
		refused bool
	}{
		{"another replica's SVID", "spiffe://example.org/mandate/authz/r2", true},
		{"the same SVID", realID, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startEnvoyHarness(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			node := &core.Node{Id: "authz-1"}
			real := h.deltaStream(ctx, t, realID)
			fetch(t, real, node, mandatev1.RevocationTypeURL, "0", "")
			if n, err := h.p.WaitAcked(ctx, mandatev1.RevocationTypeURL, "0"); err != nil || n != 1 {
				t.Fatalf("WaitAcked 0: %d %v", n, err)
			}

			// The real replica freezes (never reads again); the rogue
			// connects with its node id and ACKs whatever it gets.
			rogue := h.deltaStream(ctx, t, tt.rogueID)
			if err := rogue.Send(&discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: mandatev1.RevocationTypeURL}); err != nil {
				t.Fatal(err)
			}
			if tt.refused {
				if _, err := rogue.Recv(); status.Code(err) != codes.PermissionDenied {
					t.Fatalf("rogue stream from %s for node %s: %v, want PermissionDenied", tt.rogueID, node.GetId(), err)
				}
			} else {
				fetch(t, rogue, nil, "", "0", "")
			}
			_, v, err := h.p.RevokeRecord(ctx, revocation.Record{Kind: revocation.KindTask, Value: "T-1",
				Expires: time.Now().Add(time.Hour)}, "test")
			if err != nil {
				t.Fatal(err)
			}
			if !tt.refused {
				fetch(t, rogue, nil, "", v, "")
			}
			wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
			defer wcancel()
			if n, err := h.p.WaitAcked(wctx, mandatev1.RevocationTypeURL, v); err == nil {
				t.Fatalf("WaitAcked %s passed (%d replicas) while the real replica never received it", v, n)
			}
			st, err := h.admin.Status(ctx, &mandatev1.StatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if len(st.GetReplicas()) != 1 {
				t.Fatalf("replicas %v, want the real one only", st.GetReplicas())
			}
		})
	}
}
