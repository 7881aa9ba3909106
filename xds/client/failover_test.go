package xdsclient

import (
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// feedAt gives srv one change of typeURL at version at, as a mandate-cp
// instance following the store does.
func feedAt[M proto.Message](t *testing.T, srv *xdsserver.Server, typeURL string, at uint64, put map[string]M, del ...string) {
	t.Helper()
	msgs := map[string]proto.Message{}
	for n, m := range put {
		msgs[n] = m
	}
	if _, err := srv.UpdateAt(typeURL, at, msgs, del); err != nil {
		t.Fatal(err)
	}
}

// TestFailoverResumesOnAnotherInstance: a client with two control-plane
// instances (both following one store: the same changes at the same
// versions) syncs on the first; the first dies; the client moves to the
// second and resumes with initial_resource_versions: it decodes only
// what changed while it was away (the second instance had one more
// revocation and a deleted policy), gets the deletion, and never takes
// the whole state again.
func TestFailoverResumesOnAnotherInstance(t *testing.T) {
	a, b := startCP(t), startCP(t)
	for _, cp := range []*controlPlane{a, b} {
		feedAt(t, cp.srv, mandatev1.PolicyTypeURL, 5, pols(goodPolicy("p1"), goodPolicy("p2")))
		feedAt(t, cp.srv, mandatev1.RevocationTypeURL, 6, revs("r1", "r2", "r3"))
		feedAt(t, cp.srv, mandatev1.ApprovalTypeURL, 7, map[string]*mandatev1.Approval{"a1": approval("a1")})
		feedAt(t, cp.srv, mandatev1.VerificationKeyTypeURL, 8, map[string]*mandatev1.VerificationKey{"k1": key("k1")})
	}
	rec := newRecorder()
	reg := prometheus.NewRegistry()
	c, stop := runClient(t, Config{Conns: []grpcConn{dialConnTo(t, a.addr), dialConnTo(t, b.addr)},
		NodeID: "replica-1", Apply: rec.apply, Registerer: reg})
	defer stop()
	rec.wait(t, "synced on A", func(s State) bool {
		return len(s.Versions) == 4 && len(revIDs(s.Revocations)) == 3 && len(policyNames(s)) == 2
	})
	if !connected(a.srv) || connected(b.srv) {
		t.Fatal("the client should hold one stream, to the first instance")
	}
	before := map[string]float64{}
	for _, typ := range mandatev1.TypeURLs() {
		before[typ] = metricValue(t, c.m.decoded.WithLabelValues(short(typ)))
	}

	// While the client is on A, B serves two commits A never will.
	feedAt(t, b.srv, mandatev1.RevocationTypeURL, 9, revs("r4"))
	feedAt(t, b.srv, mandatev1.PolicyTypeURL, 10, pols(), "p2")
	a.stop()

	s := rec.wait(t, "the changes made while away", func(s State) bool {
		return slices.Equal(policyNames(s), []string{"p1"}) && slices.Equal(revIDs(s.Revocations), []string{"r1", "r2", "r3", "r4"})
	})
	if s.Versions[mandatev1.RevocationTypeURL] != "9" || s.Versions[mandatev1.PolicyTypeURL] != "10" {
		t.Fatalf("versions after failover: %v", s.Versions)
	}
	waitAcked(t, b.srv, mandatev1.PolicyTypeURL, "10")
	waitAcked(t, b.srv, mandatev1.RevocationTypeURL, "9")
	for _, typ := range mandatev1.TypeURLs() {
		want := 0.0
		if typ == mandatev1.RevocationTypeURL {
			want = 1 // r4 only
		}
		if got := metricValue(t, c.m.decoded.WithLabelValues(short(typ))) - before[typ]; got != want {
			t.Errorf("%s: %v resources decoded after the failover, want %v (no full resend)", short(typ), got, want)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.initial) != 1 || len(b.initial[0][mandatev1.RevocationTypeURL]) != 3 || len(b.initial[0][mandatev1.PolicyTypeURL]) != 2 {
		t.Fatalf("the stream to B did not resume with what the client held: %v", b.initial)
	}
}

type grpcConn = grpc.ClientConnInterface

// dialConnTo dials addr, closed when the test ends.
func dialConnTo(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// TestFailoverNeverTakesAnOlderState: the client enforces revocations up
// to version 9 from instance A; A dies and B has not caught up with the
// store yet (it is at version 6, without r4). B's answer would remove r4
// (what B lacks is sent as removed): the client refuses it, keeps r4, and
// takes B only once B has caught up.
func TestFailoverNeverTakesAnOlderState(t *testing.T) {
	a, b := startCP(t), startCP(t)
	for _, cp := range []*controlPlane{a, b} {
		feedAt(t, cp.srv, mandatev1.PolicyTypeURL, 5, pols(goodPolicy("p1")))
		feedAt(t, cp.srv, mandatev1.RevocationTypeURL, 6, revs("r1", "r2", "r3"))
		feedAt(t, cp.srv, mandatev1.ApprovalTypeURL, 7, map[string]*mandatev1.Approval{"a1": approval("a1")})
		feedAt(t, cp.srv, mandatev1.VerificationKeyTypeURL, 8, map[string]*mandatev1.VerificationKey{"k1": key("k1")})
	}
	feedAt(t, a.srv, mandatev1.RevocationTypeURL, 9, revs("r4"))

	rec := newRecorder()
	var lost atomic.Int32 // applied states without r4 once it was enforced
	var hadR4 atomic.Bool
	rec.fail = func(s State) error {
		has := slices.Contains(revIDs(s.Revocations), "r4")
		if hadR4.Load() && !has {
			lost.Add(1)
		}
		if has {
			hadR4.Store(true)
		}
		return nil
	}
	c, stop := runClient(t, Config{Conns: []grpcConn{dialConnTo(t, a.addr), dialConnTo(t, b.addr)},
		NodeID: "replica-1", Apply: rec.apply, Registerer: prometheus.NewRegistry()})
	defer stop()
	rec.wait(t, "synced on A with r4", func(s State) bool {
		return len(s.Versions) == 4 && slices.Contains(revIDs(s.Revocations), "r4")
	})
	a.stop()

	// B answers at version 6: refused, again on every reconnect.
	deadline := time.Now().Add(15 * time.Second)
	for metricValue(t, c.m.behind) < 2 && lost.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the client never refused B's older state")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := lost.Load(); n != 0 {
		t.Fatalf("r4 was dropped %d times after failing over to an instance that was behind", n)
	}

	// B catches up: the client resumes on it, r4 still enforced.
	feedAt(t, b.srv, mandatev1.RevocationTypeURL, 9, revs("r4"))
	waitAcked(t, b.srv, mandatev1.RevocationTypeURL, "9")
	s := rec.wait(t, "on B at version 9", func(s State) bool { return s.Versions[mandatev1.RevocationTypeURL] == "9" })
	if got := revIDs(s.Revocations); !slices.Equal(got, []string{"r1", "r2", "r3", "r4"}) {
		t.Fatalf("revocations on B: %v", got)
	}
	if n := lost.Load(); n != 0 {
		t.Fatalf("r4 was dropped %d times", n)
	}
}
