package xdsclient

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// unitClient is a Client driven through handle, recording every State
// it applies.
type unitClient struct {
	c       *Client
	applied []State
}

func newUnitClient(t testing.TB) *unitClient {
	t.Helper()
	u := &unitClient{}
	c, err := New(Config{Conn: noConn{}, NodeID: "unit", Logger: discard(),
		Apply: func(s State) error { u.applied = append(u.applied, s); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	u.c = c
	return u
}

func (u *unitClient) last() State { return u.applied[len(u.applied)-1] }

func (u *unitClient) decoded(t *testing.T, typeURL string) float64 {
	return metricValue(t, u.c.m.decoded.WithLabelValues(short(typeURL)))
}

func taskRev(name, task string) *mandatev1.Revocation {
	return &mandatev1.Revocation{Name: name, Kind: "task", Value: task, Expires: timestamppb.New(farFuture)}
}

func response(t testing.TB, typeURL, version string, put []proto.Message, removed ...string) *discovery.DeltaDiscoveryResponse {
	r := &discovery.DeltaDiscoveryResponse{TypeUrl: typeURL, SystemVersionInfo: version, Nonce: "n" + version, RemovedResources: removed}
	for _, m := range put {
		r.Resources = append(r.Resources, &discovery.Resource{Name: m.(interface{ GetName() string }).GetName(),
			Version: version, Resource: anyOf(t, m)})
	}
	return r
}

func revocationsIn(s State) []string {
	var out []string
	for _, r := range s.Revocations.Records() {
		out = append(out, r.ID+"="+r.Value)
	}
	return out
}

// TestDeltaDecodesOnlyChanged: after the first full response, a delta
// that changes one resource of many decodes and validates that one only,
// for every type, and the State applied is the whole set.
func TestDeltaDecodesOnlyChanged(t *testing.T) {
	const n = 50
	u := newUnitClient(t)
	var all []*mandatev1.Revocation
	for i := range n {
		all = append(all, taskRev(fmt.Sprintf("r%02d", i), fmt.Sprintf("t%02d", i)))
	}
	w := wire{}
	if reply := u.c.handle(w.delta(t, "1", all)); reply.GetErrorDetail() != nil {
		t.Fatal(reply.GetErrorDetail())
	}
	if got := u.decoded(t, mandatev1.RevocationTypeURL); got != n {
		t.Fatalf("first response decoded %v, want %d", got, n)
	}
	first := u.last().Revocations

	// One record changed, one removed, one added: only the records of
	// the shards they are in are decoded (at 50 records, mostly their own).
	delta := w.delta(t, "2", []*mandatev1.Revocation{taskRev("r07", "t-changed"), taskRev("r99", "t99")}, "r03")
	reply := u.c.handle(delta)
	if reply.GetErrorDetail() != nil {
		t.Fatal(reply.GetErrorDetail())
	}
	if got, want := u.decoded(t, mandatev1.RevocationTypeURL)-n, recordsIn(t, delta); got != float64(want) || want > 4 {
		t.Fatalf("delta decoded %v records, want the %d of its shards", got, want)
	}
	st := u.last()
	now := time.Now()
	if st.Versions[mandatev1.RevocationTypeURL] != "2" || st.Revocations.Len() != n {
		t.Fatalf("state: version %q, %d records", st.Versions[mandatev1.RevocationTypeURL], st.Revocations.Len())
	}
	for _, c := range []struct {
		task    string
		revoked bool
	}{{"t07", false}, {"t-changed", true}, {"t03", false}, {"t99", true}, {"t10", true}} {
		if got := st.Revocations.Check(now, revocation.Query{Subject: "spiffe://e.org/a", Task: c.task}).Revoked; got != c.revoked {
			t.Errorf("task %s revoked %v, want %v", c.task, got, c.revoked)
		}
	}
	// The State applied earlier is a snapshot: the delta did not reach it.
	if first.Len() != n || !first.Check(now, revocation.Query{Task: "t03"}).Revoked ||
		first.Check(now, revocation.Query{Task: "t99"}).Revoked {
		t.Fatal("an earlier State's revocation set changed")
	}

	// The same for approvals (kept decoded per name).
	var as []proto.Message
	for i := range 20 {
		as = append(as, approval(fmt.Sprintf("a%02d", i)))
	}
	u.c.handle(response(t, mandatev1.ApprovalTypeURL, "1", as))
	changed := approval("a05")
	changed.Path = "/changed"
	if reply := u.c.handle(response(t, mandatev1.ApprovalTypeURL, "2", []proto.Message{changed}, "a06")); reply.GetErrorDetail() != nil {
		t.Fatal(reply.GetErrorDetail())
	}
	if got := u.decoded(t, mandatev1.ApprovalTypeURL); got != 21 {
		t.Fatalf("approvals decoded %v, want 20 + 1", got)
	}
	got := u.last().Approvals
	var names []string
	for _, a := range got {
		names = append(names, a.GetName())
	}
	if len(got) != 19 || !slices.IsSorted(names) || slices.Contains(names, "a06") || got[5].GetPath() != "/changed" {
		t.Fatalf("approvals after delta: %v (a05 path %q)", names, got[5].GetPath())
	}
}

// TestBadRecordInDeltaNACKed: a delta carrying one bad record is NACKed
// and the last good set stays; the next delta that fixes it is ACKed
// with everything received since.
func TestBadRecordInDeltaNACKed(t *testing.T) {
	u := newUnitClient(t)
	w := wire{}
	if reply := u.c.handle(w.delta(t, "1",
		[]*mandatev1.Revocation{taskRev("a", "ta"), taskRev("b", "tb")})); reply.GetErrorDetail() != nil {
		t.Fatal(reply.GetErrorDetail())
	}
	good := u.last()
	calls := len(u.applied)

	bad := &mandatev1.Revocation{Name: "bad", Kind: "subject", Value: "spiffe://e.org/x/**/y", Expires: timestamppb.New(farFuture)}
	reply := u.c.handle(w.delta(t, "2", []*mandatev1.Revocation{taskRev("c", "tc"), bad}, "a"))
	if reply.GetErrorDetail() == nil || !strings.Contains(reply.GetErrorDetail().GetMessage(), `Revocation "bad"`) {
		t.Fatalf("bad delta answered %v, want a NACK naming the record", reply.GetErrorDetail())
	}
	if len(u.applied) != calls || u.c.state().Revocations != good.Revocations || u.c.state().Versions[mandatev1.RevocationTypeURL] != "1" {
		t.Fatal("a NACKed delta changed the applied state")
	}
	if got := revocationsIn(u.c.state()); !slices.Equal(got, []string{"a=ta", "b=tb"}) {
		t.Fatalf("set after NACK: %v", got)
	}
	// A heartbeat (no change) repeats the NACK.
	if reply := u.c.handle(response(t, mandatev1.RevocationTypeURL, "2", nil)); reply.GetErrorDetail() == nil {
		t.Fatal("an empty response after a NACK was ACKed")
	}
	// The fix: "bad" replaced by a valid record; "c" and the removal of
	// "a" from the NACKed delta are applied with it.
	fixed := &mandatev1.Revocation{Name: "bad", Kind: "subject", Value: "spiffe://e.org/x/y", Expires: timestamppb.New(farFuture)}
	if reply := u.c.handle(w.delta(t, "3", []*mandatev1.Revocation{fixed})); reply.GetErrorDetail() != nil {
		t.Fatalf("fixed delta NACKed: %v", reply.GetErrorDetail())
	}
	if got := revocationsIn(u.last()); !slices.Equal(got, []string{"b=tb", "bad=spiffe://e.org/x/y", "c=tc"}) ||
		u.last().Versions[mandatev1.RevocationTypeURL] != "3" {
		t.Fatalf("set after fix: %v version %v", got, u.last().Versions)
	}
	// Once applied, the next delta decodes only its own resources.
	before := u.decoded(t, mandatev1.RevocationTypeURL)
	delta := w.delta(t, "4", []*mandatev1.Revocation{taskRev("d", "td")})
	u.c.handle(delta)
	if got := u.decoded(t, mandatev1.RevocationTypeURL) - before; got != float64(recordsIn(t, delta)) {
		t.Fatalf("delta after recovery decoded %v, want the %d of its shard", got, recordsIn(t, delta))
	}
}

// BenchmarkHandleRevocationDelta is a replica's handling of one storm
// push: 1,000 new Revocations on top of 50,000 held (decode, validate,
// index, Apply, ACK).
func BenchmarkHandleRevocationDelta(b *testing.B) {
	u := newUnitClient(b)
	exp := timestamppb.New(time.Now().Add(time.Hour))
	mk := func(prefix string, n int) []*mandatev1.Revocation {
		out := make([]*mandatev1.Revocation, n)
		for i := range out {
			name := fmt.Sprintf("%s-%d", prefix, i)
			out[i] = &mandatev1.Revocation{Name: name, Kind: "subject", Value: "spiffe://example.org/fleet/" + name,
				Expires: exp, CreatedAt: timestamppb.Now(), CreatedBy: "op", Reason: "bench"}
		}
		return out
	}
	w := wire{}
	if reply := u.c.handle(w.delta(b, "1", mk("base", 50_000))); reply.GetErrorDetail() != nil {
		b.Fatal(reply.GetErrorDetail())
	}
	pushes := make([]*discovery.DeltaDiscoveryResponse, 0, 64)
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		if len(pushes) == 0 {
			for j := range 64 {
				pushes = append(pushes, w.delta(b, fmt.Sprint(i+j+2), mk(fmt.Sprintf("p%d-%d", i, j), 1000)))
			}
		}
		r := pushes[0]
		pushes = pushes[1:]
		u.applied = u.applied[:0]
		b.StartTimer()
		if reply := u.c.handle(r); reply.GetErrorDetail() != nil {
			b.Fatal(reply.GetErrorDetail())
		}
	}
}
