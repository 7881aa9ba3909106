package xdsserver

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// deltaReplica is a raw delta-ADS subscriber to Revocations that keeps
// what the server sent it, as a replica would: shards, and the records in
// them.
type deltaReplica struct {
	t      *testing.T
	st     discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	held   map[string]string   // shard name -> resource version
	shards map[string][]string // shard name -> its records' names
	value  map[string]*mandatev1.Revocation
	// resent counts the shards received in the last response.
	resent int
}

func subscribe(t *testing.T, ctx context.Context, h *harness, node string, initial map[string]string) *deltaReplica {
	t.Helper()
	st, err := h.ads.DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: mandatev1.RevocationTypeURL,
		ResourceNamesSubscribe: []string{"*"}, InitialResourceVersions: initial}); err != nil {
		t.Fatal(err)
	}
	return &deltaReplica{t: t, st: st, held: maps.Clone(initial), shards: map[string][]string{},
		value: map[string]*mandatev1.Revocation{}}
}

// next receives one response, applies and ACKs it, and returns the
// version, the records carried (by the shards received) and the records
// removed (that left their shard, or whose shard was removed), sorted.
func (d *deltaReplica) next() (version string, updated, removed []string) {
	d.t.Helper()
	r := recvDelta(d.t, d.st)
	if d.held == nil {
		d.held = map[string]string{}
	}
	d.resent = len(r.GetResources())
	for _, res := range r.GetResources() {
		if got := res.GetResource().GetTypeUrl(); got != mandatev1.RevocationShardTypeURL {
			d.t.Fatalf("shard %s sent as a %s", res.GetName(), got)
		}
		var sh mandatev1.RevocationShard
		if err := res.GetResource().UnmarshalTo(&sh); err != nil {
			d.t.Fatal(err)
		}
		if sh.GetName() != res.GetName() || len(sh.GetRevocations()) == 0 {
			d.t.Fatalf("shard %s: %v", res.GetName(), &sh)
		}
		var names []string
		for _, m := range sh.GetRevocations() {
			if shardName(m.GetName()) != sh.GetName() {
				d.t.Fatalf("record %s in shard %s", m.GetName(), sh.GetName())
			}
			d.value[m.GetName()] = m
			names = append(names, m.GetName())
		}
		if !slices.IsSorted(names) {
			d.t.Fatalf("shard %s records not sorted: %v", sh.GetName(), names)
		}
		for _, old := range d.shards[sh.GetName()] {
			if !slices.Contains(names, old) {
				delete(d.value, old)
				removed = append(removed, old)
			}
		}
		d.held[res.GetName()] = res.GetVersion()
		d.shards[res.GetName()] = names
		updated = append(updated, names...)
	}
	for _, n := range r.GetRemovedResources() {
		for _, old := range d.shards[n] {
			delete(d.value, old)
			removed = append(removed, old)
		}
		delete(d.held, n)
		delete(d.shards, n)
	}
	if err := d.st.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: mandatev1.RevocationTypeURL, ResponseNonce: r.GetNonce()}); err != nil {
		d.t.Fatal(err)
	}
	slices.Sort(updated)
	slices.Sort(removed)
	return r.GetSystemVersionInfo(), updated, removed
}

// reconnect opens a new stream for the same node that announces the
// shards d holds (initial_resource_versions) and keeps what d holds.
func (d *deltaReplica) reconnect(ctx context.Context, h *harness, node string) *deltaReplica {
	d.t.Helper()
	back := subscribe(d.t, ctx, h, node, d.held)
	back.shards, back.value = maps.Clone(d.shards), maps.Clone(d.value)
	return back
}

func TestUpdateRevocationsDeltas(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if v, err := h.srv.SetRevocations(revs("r1", "r2")); err != nil || v != "1" {
		t.Fatalf("SetRevocations = %q, %v", v, err)
	}
	d := subscribe(t, ctx, h, "replica-a", nil)
	if v, up, rm := d.next(); v != "1" || !slices.Equal(up, []string{"r1", "r2"}) || rm != nil {
		t.Fatalf("first response: %q %v %v", v, up, rm)
	}

	changed := rev("r1")
	changed.Reason = "changed"
	steps := []struct {
		name     string
		put      map[string]*mandatev1.Revocation
		del      []string
		version  string
		updated  []string
		removed  []string
		response bool
	}{
		{"add one", revs("r3"), nil, "2", []string{"r3"}, nil, true},
		{"change one, delete one", map[string]*mandatev1.Revocation{"r1": changed}, []string{"r2", "r2"}, "3", []string{"r1"}, []string{"r2"}, true},
		{"no change: same put, absent delete", revs("r3"), []string{"nope"}, "3", nil, nil, false},
		{"empty call", nil, nil, "3", nil, nil, false},
		{"add two, delete the rest", revs("r4", "r5"), []string{"r1", "r3"}, "4", []string{"r4", "r5"}, []string{"r1", "r3"}, true},
	}
	for _, st := range steps {
		v, err := h.srv.UpdateRevocations(st.put, st.del)
		if err != nil || v != st.version {
			t.Fatalf("%s: UpdateRevocations = %q, %v; want %q", st.name, v, err, st.version)
		}
		if got := h.srv.Versions()[mandatev1.RevocationTypeURL]; got != st.version {
			t.Fatalf("%s: Versions says %q", st.name, got)
		}
		if !st.response {
			continue
		}
		gv, up, rm := d.next()
		if gv != st.version || !slices.Equal(up, st.updated) || !slices.Equal(rm, st.removed) {
			t.Fatalf("%s: response %q updated %v removed %v; want %q %v %v", st.name, gv, up, rm, st.version, st.updated, st.removed)
		}
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		if err := h.srv.WaitAcked(wctx, mandatev1.RevocationTypeURL, st.version); err != nil {
			t.Fatalf("%s: WaitAcked: %v", st.name, err)
		}
		wcancel()
	}
	if got := slices.Sorted(maps.Keys(d.value)); !slices.Equal(got, []string{"r4", "r5"}) {
		t.Fatalf("replica holds %v", got)
	}

	// A full Set after updates compares with what the updates left.
	if v, _ := h.srv.SetRevocations(revs("r4", "r5")); v != "4" {
		t.Fatalf("Set of the same content gave version %q, want 4", v)
	}
	// The server keeps its own copy of what it was given.
	put := revs("r6")
	if v, _ := h.srv.UpdateRevocations(put, nil); v != "5" {
		t.Fatalf("version %q, want 5", v)
	}
	put["r6"].Reason = "mutated after the call"
	if v, _ := h.srv.UpdateRevocations(revs("r6"), nil); v != "5" {
		t.Fatalf("caller's mutation reached the server: version %q", v)
	}
	if _, up, _ := d.next(); !slices.Equal(up, []string{"r6"}) || d.value["r6"].GetReason() != "" {
		t.Fatalf("r6 delivered as %v %v", up, d.value["r6"])
	}
}

func TestUpdateRevocationsValidation(t *testing.T) {
	h := start(t)
	if _, err := h.srv.SetRevocations(revs("a")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		put  map[string]*mandatev1.Revocation
		del  []string
		want string
	}{
		{"nil resource", map[string]*mandatev1.Revocation{"b": nil}, nil, "nil resource"},
		{"key mismatch", map[string]*mandatev1.Revocation{"b": rev("c")}, nil, "does not match"},
		{"empty key", map[string]*mandatev1.Revocation{"": rev("")}, nil, "does not match"},
		{"put and deleted", revs("b"), []string{"b"}, "both put and deleted"},
		{"empty delete", nil, []string{""}, "empty name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.srv.UpdateRevocations(tt.put, tt.del)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if v := h.srv.Versions()[mandatev1.RevocationTypeURL]; v != "1" {
				t.Fatalf("refused update moved the version to %s", v)
			}
		})
	}
}

// TestUpdateReconnectConverges: a replica that reconnects with the
// versions it holds gets only what changed while it was away, and one
// that starts empty gets everything; both end with the server's content.
func TestUpdateReconnectConverges(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := h.srv.UpdateRevocations(revs("a", "b", "c"), nil); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(ctx)
	d := subscribe(t, sctx, h, "replica-a", nil)
	if _, up, _ := d.next(); len(up) != 3 {
		t.Fatalf("first response updated %v", up)
	}
	scancel()
	waitFor(t, "stream closed", func() bool { return !replica(t, h.srv, "replica-a").Connected })

	changed := rev("b")
	changed.Reason = "now different"
	if _, err := h.srv.UpdateRevocations(map[string]*mandatev1.Revocation{"b": changed, "d": rev("d")}, []string{"c"}); err != nil {
		t.Fatal(err)
	}
	v, err := h.srv.UpdateRevocations(revs("e"), []string{"a"})
	if err != nil || v != "3" {
		t.Fatalf("version %q, %v", v, err)
	}

	back := d.reconnect(ctx, h, "replica-a")
	gv, up, rm := back.next()
	if gv != "3" || !slices.Equal(up, []string{"b", "d", "e"}) || !slices.Equal(rm, []string{"a", "c"}) {
		t.Fatalf("reconnect: version %q updated %v removed %v", gv, up, rm)
	}
	fresh := subscribe(t, ctx, h, "replica-b", nil)
	if _, up, rm := fresh.next(); !slices.Equal(up, []string{"b", "d", "e"}) || rm != nil {
		t.Fatalf("fresh: updated %v removed %v", up, rm)
	}
	for _, r := range []*deltaReplica{back, fresh} {
		if !proto.Equal(r.value["b"], changed) || !slices.Equal(slices.Sorted(maps.Keys(r.value)), []string{"b", "d", "e"}) {
			t.Fatalf("replica did not converge: %v", slices.Sorted(maps.Keys(r.value)))
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := h.srv.WaitAcked(wctx, mandatev1.RevocationTypeURL, "3"); err != nil {
		t.Fatal(err)
	}
}
