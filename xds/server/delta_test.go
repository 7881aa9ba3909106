package xdsserver

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	stream "github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

func (s *Server) fullDiffs(typeURL string) int {
	dc := s.types[typeURL].delta
	dc.mu.Lock()
	defer dc.mu.Unlock()
	return dc.fullDiffs
}

// checkHolds fails unless d holds exactly the server's records.
func checkHolds(t *testing.T, what string, d *deltaReplica, want map[string]*mandatev1.Revocation) {
	t.Helper()
	if len(d.value) != len(want) {
		t.Fatalf("%s: replica holds %d records, want %d", what, len(d.value), len(want))
	}
	for name, r := range want {
		if !proto.Equal(d.value[name], r) {
			t.Fatalf("%s: replica holds %v for %s, want %v", what, d.value[name], name, r)
		}
	}
}

// TestPushCostsTheChangesOnly: with thousands of shards held by several
// streams, every push reaches every stream with exactly the shards it
// changed and the new version, and no stream's response compares the
// whole set again (only first syncs do); a stream that lags behind the
// change log is compared with everything and converges all the same.
func TestPushCostsTheChangesOnly(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	all := manyRevs(3000)
	if _, err := h.srv.SetRevocations(all); err != nil {
		t.Fatal(err)
	}
	const n = 6
	var ds []*deltaReplica
	for i := range n {
		d := subscribe(t, ctx, h, fmt.Sprintf("replica-%d", i), nil)
		d.next()
		ds = append(ds, d)
	}
	synced := h.srv.fullDiffs(mandatev1.RevocationTypeURL)
	if synced != n {
		t.Fatalf("%d full comparisons for %d first syncs", synced, n)
	}
	pair := sameShard(2)
	changed := rev("rec-00007")
	changed.Reason = "changed"
	steps := []struct {
		name string
		put  map[string]*mandatev1.Revocation
		del  []string
	}{
		{"add one", revs("new-1"), nil},
		{"two in one shard", revs(pair...), nil},
		{"change one", map[string]*mandatev1.Revocation{"rec-00007": changed}, nil},
		{"delete one of a pair", nil, pair[:1]},
		{"batch", revs("b-1", "b-2", "b-3", "b-4"), []string{"rec-00001", "rec-00002", "new-1"}},
	}
	for _, st := range steps {
		before := maps.Clone(all)
		maps.Copy(all, st.put)
		for _, name := range st.del {
			delete(all, name)
		}
		v, err := h.srv.UpdateRevocations(st.put, st.del)
		if err != nil {
			t.Fatal(err)
		}
		// The shards the step touched, and what they must hold now.
		touched := map[string]bool{}
		for name := range st.put {
			touched[shardName(name)] = true
		}
		for _, name := range st.del {
			touched[shardName(name)] = true
		}
		var wantUp, wantRm []string
		for name := range all {
			if touched[shardName(name)] {
				wantUp = append(wantUp, name)
			}
		}
		for name := range before {
			if _, ok := all[name]; !ok {
				wantRm = append(wantRm, name)
			}
		}
		slices.Sort(wantUp)
		slices.Sort(wantRm)
		for i, d := range ds {
			gv, up, rm := d.next()
			// A record that moved out of a resent shard counts as
			// removed, as does every record of a removed shard.
			if gv != v || !slices.Equal(up, wantUp) || !slices.Equal(rm, wantRm) {
				t.Fatalf("%s: replica %d got version %s updated %v removed %v; want %s %v %v", st.name, i, gv, up, rm, v, wantUp, wantRm)
			}
			checkHolds(t, st.name, d, all)
		}
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		if n, err := h.srv.WaitAckedOrRejected(wctx, mandatev1.RevocationTypeURL, v); err != nil || n != len(ds) {
			t.Fatalf("%s: %d acked, %v", st.name, n, err)
		}
		wcancel()
	}
	if got := h.srv.fullDiffs(mandatev1.RevocationTypeURL); got != synced {
		t.Fatalf("pushes compared the whole set %d times", got-synced)
	}

	// A stream that lags past the change log is compared with
	// everything and converges.
	dc := h.srv.types[mandatev1.RevocationTypeURL].delta
	dc.mu.Lock()
	dc.logVersions = 2
	dc.mu.Unlock()
	lagging := ds[0]
	for i := range 4 {
		put := revs(fmt.Sprintf("late-%d", i))
		maps.Copy(all, put)
		if _, err := h.srv.UpdateRevocations(put, nil); err != nil {
			t.Fatal(err)
		}
		for _, d := range ds[1:] {
			d.next()
		}
	}
	// ds[0] read nothing meanwhile: one response waits for it (the
	// first push's); its ACK finds the log moved past its mark, and the
	// next response, from a full comparison, brings the rest.
	full := h.srv.fullDiffs(mandatev1.RevocationTypeURL)
	if _, up, _ := lagging.next(); !slices.Contains(up, "late-0") || slices.Contains(up, "late-1") {
		t.Fatalf("lagging replica's first response updated %v", up)
	}
	if _, up, _ := lagging.next(); !slices.Contains(up, "late-1") || !slices.Contains(up, "late-3") || slices.Contains(up, "late-0") {
		t.Fatalf("lagging replica's catch-up updated %v", up)
	}
	checkHolds(t, "lagging replica", lagging, all)
	if got := h.srv.fullDiffs(mandatev1.RevocationTypeURL); got != full+1 {
		t.Fatalf("catch-up made %d full comparisons, want 1", got-full)
	}
}

// TestNackAndSlowStreamsDoNotHoldOthers: a stream that NACKs every
// response and one that never reads nor ACKs do not keep the others
// from receiving and ACKing every version.
func TestNackAndSlowStreamsDoNotHoldOthers(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	all := manyRevs(100)
	if _, err := h.srv.SetRevocations(all); err != nil {
		t.Fatal(err)
	}
	slow := subscribe(t, ctx, h, "slow", nil) // never reads
	_ = slow
	nack, err := h.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := nack.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "nacker"}, TypeUrl: mandatev1.RevocationTypeURL,
		ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			r, err := nack.Recv()
			if err != nil {
				return
			}
			_ = nack.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: r.GetTypeUrl(), ResponseNonce: r.GetNonce(),
				ErrorDetail: &rpcstatus.Status{Code: 3, Message: "no"}})
		}
	}()
	var ds []*deltaReplica
	for i := range 3 {
		d := subscribe(t, ctx, h, fmt.Sprintf("good-%d", i), nil)
		d.next()
		ds = append(ds, d)
	}
	waitFor(t, "five replicas connected", func() bool { return len(h.srv.Status()) == 5 })
	for i := range 50 {
		name := fmt.Sprintf("x-%d", i)
		put := revs(name)
		maps.Copy(all, put)
		v, err := h.srv.UpdateRevocations(put, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if gv, up, _ := d.next(); gv != v || !slices.Contains(up, name) {
				t.Fatalf("push %d: version %s updated %v", i, gv, up)
			}
		}
	}
	for _, d := range ds {
		checkHolds(t, "good replica", d, all)
	}
	st := replica(t, h.srv, "nacker").Types[mandatev1.RevocationTypeURL]
	if st.NackedVersion == "" || st.AckedVersion != "" {
		t.Fatalf("nacker status %+v", st)
	}
}

// TestForgedMarkIgnored: a client that puts the server's mark key in its
// initial_resource_versions is compared with everything, as any first
// request: it cannot make the server skip what it lacks.
func TestForgedMarkIgnored(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := manyRevs(50)
	v, err := h.srv.SetRevocations(all)
	if err != nil {
		t.Fatal(err)
	}
	d := subscribe(t, ctx, h, "forger", map[string]string{seqKey: v})
	gv, up, _ := d.next()
	if gv != v || len(up) != len(all) {
		t.Fatalf("forged mark: version %s, %d of %d records", gv, len(up), len(all))
	}
	checkHolds(t, "forger", d, all)
}

// TestRequestMapLeftAsItIs: the map of initial_resource_versions a
// request carries (which go-control-plane makes the stream's map) is
// copied before the cache writes its mark and versions: whoever holds the
// request (an interceptor, a log) sees what the client sent.
func TestRequestMapLeftAsItIs(t *testing.T) {
	h := start(t)
	if _, err := h.srv.SetRevocations(revs("a", "b")); err != nil {
		t.Fatal(err)
	}
	dc := h.srv.types[mandatev1.RevocationTypeURL].delta
	initial := map[string]string{shardName("a"): "stale", "gone": "1"}
	sent := maps.Clone(initial)
	req := &discovery.DeltaDiscoveryRequest{TypeUrl: mandatev1.RevocationTypeURL, ResourceNamesSubscribe: []string{"*"},
		InitialResourceVersions: initial}
	sub := stream.NewDeltaSubscription(req.GetResourceNamesSubscribe(), nil, req.GetInitialResourceVersions(), true)
	out := make(chan cachev3.DeltaResponse, 1)
	if _, err := dc.CreateDeltaWatch(req, &sub, out); err != nil {
		t.Fatal(err)
	}
	r := <-out
	if !maps.Equal(initial, sent) {
		t.Fatalf("request's map changed to %q", initial)
	}
	got := r.GetReturnedResources()
	if _, ok := got[seqKey]; !ok || len(got) != 1+len(sameShardNames("a", "b")) {
		t.Fatalf("returned map %q", got)
	}
}

// sameShardNames returns the distinct shards of records.
func sameShardNames(records ...string) map[string]bool {
	out := map[string]bool{}
	for _, r := range records {
		out[shardName(r)] = true
	}
	return out
}
