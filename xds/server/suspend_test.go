package xdsserver

import (
	"context"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TestSuspendClosesAndRefusesStreams: Suspend ends every open stream
// with Unavailable and the reason, refuses new streams the same way, and
// Resume serves again.
func TestSuspendClosesAndRefusesStreams(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := h.srv.UpdateRevocations(revs("a"), nil); err != nil {
		t.Fatal(err)
	}
	d := subscribe(t, ctx, h, "replica-a", nil)
	if _, up, _ := d.next(); len(up) != 1 {
		t.Fatalf("first response updated %v", up)
	}
	h.srv.Suspend("etcd unavailable for 5s")
	_, err := d.st.Recv()
	if status.Code(err) != codes.Unavailable || !strings.Contains(status.Convert(err).Message(), "etcd unavailable for 5s") {
		t.Fatalf("open stream after Suspend: %v, want Unavailable with the reason", err)
	}
	waitFor(t, "stream closed", func() bool { return !replica(t, h.srv, "replica-a").Connected })

	st, err := h.ads.DeltaAggregatedResources(ctx)
	if err == nil {
		_, err = st.Recv()
	}
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("new stream while suspended: %v, want Unavailable", err)
	}

	h.srv.Resume()
	again := subscribe(t, ctx, h, "replica-a", maps.Clone(d.held))
	if v, up, rm := again.next(); v == "" || len(up) != 0 || len(rm) != 0 {
		t.Fatalf("after Resume: version %q updated %v removed %v", v, up, rm)
	}
}

// TestResumeOnAnotherServer: two servers fed the same committed changes
// at the same versions (two mandate-cp instances following one store)
// give every resource the same version (go-control-plane's delta
// resource versions hash the resource), so a replica that moves from one
// to the other with initial_resource_versions gets only what changed
// while it was away, deletions included, at the same system version.
func TestResumeOnAnotherServer(t *testing.T) {
	a, b := start(t), start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	both := func(at uint64, put []string, del []string) {
		t.Helper()
		for _, h := range []*harness{a, b} {
			if _, err := h.srv.UpdateAt(mandatev1.RevocationTypeURL, at, msgs(put...), del); err != nil {
				t.Fatal(err)
			}
		}
	}
	both(10, []string{"r1", "r2", "r3"}, nil)
	onA := subscribe(t, ctx, a, "replica", nil)
	if v, up, _ := onA.next(); v != "10" || len(up) != 3 {
		t.Fatalf("on A: version %q updated %v", v, up)
	}
	held := maps.Clone(onA.held)
	// B has one more write (r4) and a deletion (r2) that A never served.
	if _, err := b.srv.UpdateAt(mandatev1.RevocationTypeURL, 12, msgs("r4"), []string{"r2"}); err != nil {
		t.Fatal(err)
	}
	onB := onA.reconnect(ctx, b, "replica")
	v, up, rm := onB.next()
	if v != "12" || !slices.Equal(up, []string{"r4"}) || !slices.Equal(rm, []string{"r2"}) {
		t.Fatalf("on B: version %q updated %v removed %v; want only r4 and the removal of r2", v, up, rm)
	}
	for name, ver := range held {
		if name != shardName("r2") && onB.held[name] != ver {
			t.Fatalf("%s: version %s on B, %s on A", name, onB.held[name], ver)
		}
	}
	if !proto.Equal(onB.value["r4"], msgs("r4")["r4"]) {
		t.Fatalf("r4 on B: %v", onB.value["r4"])
	}
}
