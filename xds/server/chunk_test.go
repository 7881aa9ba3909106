package xdsserver

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TestSplitDeltaAckedWithTheLastChunk: a revocation delta over the chunk
// budget arrives in several responses, none over the budget; every one
// but the last is marked partial, and only the ACK of the last counts as
// an ACK of the version.
func TestSplitDeltaAckedWithTheLastChunk(t *testing.T) {
	const budget = 4 << 10
	h := start(t, WithChunkBytes(budget))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	all := map[string]*mandatev1.Revocation{}
	for i := range 200 {
		r := rev(fmt.Sprintf("r-%03d", i))
		r.Reason = strings.Repeat("x", 100)
		all[r.GetName()] = r
	}
	v, err := h.srv.SetRevocations(all)
	if err != nil {
		t.Fatal(err)
	}
	st, err := h.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "r"}, TypeUrl: mandatev1.RevocationTypeURL,
		ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	chunks := 0
	for {
		r := recvDelta(t, st)
		chunks++
		if n := proto.Size(r); n > budget {
			t.Fatalf("chunk %d of %d bytes exceeds the budget %d", chunks, n, budget)
		}
		for _, res := range r.GetResources() {
			var sh mandatev1.RevocationShard
			if err := res.GetResource().UnmarshalTo(&sh); err != nil {
				t.Fatal(err)
			}
			for _, rec := range sh.GetRevocations() {
				if got[rec.GetName()] {
					t.Fatalf("%s sent twice", rec.GetName())
				}
				got[rec.GetName()] = true
			}
		}
		partial := strings.HasSuffix(r.GetSystemVersionInfo(), mandatev1.PartialVersionSuffix)
		if err := st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce()}); err != nil {
			t.Fatal(err)
		}
		if !partial {
			if r.GetSystemVersionInfo() != v {
				t.Fatalf("last chunk version %q, want %q", r.GetSystemVersionInfo(), v)
			}
			break
		}
		if strings.TrimSuffix(r.GetSystemVersionInfo(), mandatev1.PartialVersionSuffix) != v {
			t.Fatalf("chunk version %q, want %q+", r.GetSystemVersionInfo(), v)
		}
		// Only part of the delta is in: the version is not ACKed.
		short, c := context.WithTimeout(ctx, 30*time.Millisecond)
		err := h.srv.WaitAcked(short, mandatev1.RevocationTypeURL, v)
		c()
		if err == nil {
			t.Fatalf("version %s counted as ACKed after chunk %d of a split delta", v, chunks)
		}
	}
	if chunks < 2 || len(got) != len(all) {
		t.Fatalf("%d chunks carried %d of %d records", chunks, len(got), len(all))
	}
	if err := h.srv.WaitAcked(ctx, mandatev1.RevocationTypeURL, v); err != nil {
		t.Fatal(err)
	}
}
