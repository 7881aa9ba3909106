package plane

import (
	"context"
	"strconv"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/authz/revocation"
	xdsclient "github.com/mandate-dev/mandate/xds/client"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

func TestRestartRecoversEverything(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	e := open(t, dir)
	if _, err := e.p.ApplyPolicies(ctx, []*mandatev1.Policy{pol("reader", policyA), pol("writer", policyB)}, "op"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.DeletePolicy(ctx, "writer", "op"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.Revoke(ctx, revocation.Record{Kind: revocation.KindTask, Value: "t1", Expires: future()}, "op"); err != nil {
		t.Fatal(err)
	}
	k := &mandatev1.VerificationKey{Name: "k1", Algorithm: "EdDSA", PublicKey: make([]byte, 32)}
	if _, err := e.p.SetVerificationKeys(ctx, []*mandatev1.VerificationKey{k}, "op"); err != nil {
		t.Fatal(err)
	}
	// An empty type with a version above zero: an approval put then deleted.
	a := &mandatev1.Approval{Name: "a1", Subject: "spiffe://example.org/agent/a", Method: "GET", ApprovedBy: "op",
		Expires: mustTS(future())}
	if _, err := e.p.PutApproval(ctx, a, "op"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.DeleteApproval(ctx, "a1", "op"); err != nil {
		t.Fatal(err)
	}
	before := e.xds.Versions()
	pols, _ := e.p.Policies()
	revs, _ := e.p.Revocations(true)
	e.close()

	e2 := open(t, dir)
	after := e2.xds.Versions()
	for typ, v := range before {
		if after[typ] != v {
			t.Errorf("%s: version %s before restart, %s after", typ, v, after[typ])
		}
	}
	pols2, _ := e2.p.Policies()
	revs2, _ := e2.p.Revocations(true)
	if len(pols2) != len(pols) || !proto.Equal(pols2[0], pols[0]) || len(revs2) != 1 || !proto.Equal(revs2[0], revs[0]) {
		t.Fatalf("state after restart differs: %v %v", pols2, revs2)
	}
	// A replica connecting to the restarted plane gets exactly that state.
	r := startReplica(t, e2.addr, "n1")
	waitFor(t, "replica sync", func() bool {
		s, ok := r.applied.Load().(xdsclient.State)
		return ok && len(s.Versions) == 4 && s.Policies != nil && s.Policies.Len() == 1 && s.Revocations.Len() == 1
	})
	// Writes continue from the stored versions.
	v, err := e2.p.Revoke(ctx, revocation.Record{Kind: revocation.KindTask, Value: "t2", Expires: future()}, "op")
	if err != nil {
		t.Fatal(err)
	}
	sv, _ := e2.st.Version(ctx, mandatev1.RevocationTypeURL)
	// Versions are the store's: global revisions, so the next write lands
	// above every type's version, and xDS serves exactly the stored one.
	if xv := mustUint(v); xv != sv || xv <= mustUint(after[mandatev1.RevocationTypeURL]) || xv <= mustUint(after[mandatev1.ApprovalTypeURL]) {
		t.Fatalf("revocation version after restart: xds %s, store %d (before: %v)", v, sv, after)
	}
}

func mustUint(s string) uint64 {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		panic(err)
	}
	return n
}

// TestKeyRotationIsOneWrite: replacing a verification key by its
// successor is one store transaction and one version: a replica never
// holds neither key, and the audit trail has both changes.
func TestKeyRotationIsOneWrite(t *testing.T) {
	ctx := context.Background()
	e := open(t, t.TempDir())
	k1 := &mandatev1.VerificationKey{Name: "k1", Algorithm: "EdDSA", PublicKey: make([]byte, 32)}
	k2 := &mandatev1.VerificationKey{Name: "k2", Algorithm: "EdDSA", PublicKey: append(make([]byte, 31), 1)}
	v1, err := e.p.SetVerificationKeys(ctx, []*mandatev1.VerificationKey{k1}, "op")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := e.st.AuditLog(ctx, time.Time{}, 0)
	v2, err := e.p.SetVerificationKeys(ctx, []*mandatev1.VerificationKey{k2}, "op")
	if err != nil {
		t.Fatal(err)
	}
	sv, _ := e.st.Version(ctx, mandatev1.VerificationKeyTypeURL)
	// Nothing else writes: one transaction raises the global revision by one.
	if mustUint(v2) != sv || sv != mustUint(v1)+1 {
		t.Fatalf("versions %s then %s, store %d", v1, v2, sv)
	}
	after, _ := e.st.AuditLog(ctx, time.Time{}, 0)
	added := after[len(before):]
	if len(added) != 2 || added[0].Action != "key.put" || added[1].Action != "key.delete" || added[0].Seq+1 != added[1].Seq {
		t.Fatalf("audit of the rotation: %+v", added)
	}
	if ks := e.p.VerificationKeys(); len(ks) != 1 || ks[0].GetName() != "k2" {
		t.Fatalf("keys %v", ks)
	}
	if v3, err := e.p.SetVerificationKeys(ctx, []*mandatev1.VerificationKey{k2}, "op"); err != nil || v3 != v2 {
		t.Fatalf("a no-op set: %s, %v", v3, err)
	}
}
