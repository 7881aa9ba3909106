package mandate

import (
	"slices"
	"testing"
	"time"
)

func TestDelegate(t *testing.T) {
	f := newFixture(t, nil)
	root, err := f.v.Verify(f.sign(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	narrow := Scope{
		Destinations: []string{"spiffe://example.org/svc/tickets"},
		Methods:      []string{"GET"},
		Paths:        []string{"/tickets/*"},
	}
	now := t0.Add(time.Minute)
	child, err := Delegate(root, testOther, narrow, 30*time.Minute, root.Intent, 4, now)
	if err != nil {
		t.Fatal(err)
	}
	if child.Subject != testOther || child.Task != root.Task || child.Intent != root.Intent || child.Audience != root.Audience {
		t.Fatalf("child = %+v", child)
	}
	if child.Expiry != root.Expiry {
		t.Fatalf("child exp %d not clamped to parent's %d", child.Expiry, root.Expiry)
	}
	if child.IssuedAt != now.Unix() || child.NotBefore != now.Unix() {
		t.Fatalf("child iat/nbf %d/%d, want %d", child.IssuedAt, child.NotBefore, now.Unix())
	}
	if child.Depth != 1 || len(child.Chain) != 1 || child.Chain[0] != (Link{ID: root.ID, Subject: root.Subject}) {
		t.Fatalf("child chain %+v depth %d", child.Chain, child.Depth)
	}
	// Mutating the caller's scope afterwards must not reach the child.
	narrow.Paths[0] = "/**"
	if child.Scope.Paths[0] != "/tickets/*" {
		t.Fatal("child shares the caller's scope slices")
	}
	f.clock.Set(now)
	tok, err := f.signer.Sign(child)
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{root.ID, got.ID}; !slices.Equal(got.ChainIDs(), want) {
		t.Fatalf("ChainIDs %v, want %v", got.ChainIDs(), want)
	}
	if err := got.CheckHolder(testOther); err != nil {
		t.Fatal(err)
	}
	wantReason(t, got.CheckHolder(testSubject), ReasonWrongHolder)

	// A grandchild extends the chain; a short ttl is kept as asked.
	grand, err := Delegate(got, "spiffe://example.org/agent/c", Scope{Paths: []string{"/tickets/1"}, Methods: []string{"GET"}, Destinations: []string{"spiffe://example.org/svc/tickets"}}, time.Minute, got.Intent, 4, now)
	if err != nil {
		t.Fatal(err)
	}
	if grand.Depth != 2 || grand.Chain[0].ID != root.ID || grand.Chain[1].ID != got.ID {
		t.Fatalf("grandchild chain %+v", grand.Chain)
	}
	if grand.Expiry != now.Add(time.Minute).Unix() {
		t.Fatalf("grandchild exp %d", grand.Expiry)
	}
}

func TestDelegateRejects(t *testing.T) {
	parent := baseClaims(t0)
	parent.Issuer = testIssuer
	sub := Scope{Paths: []string{"/tickets/1"}, Methods: []string{"GET"}, Destinations: []string{"spiffe://example.org/svc/tickets"}}
	deep := func() *Claims {
		c := *parent
		c.Chain = []Link{{ID: fixedID(20), Subject: testOther}, {ID: fixedID(21), Subject: testOther}}
		c.Depth = 2
		return &c
	}
	tests := []struct {
		name     string
		parent   *Claims
		to       string
		scope    Scope
		ttl      time.Duration
		intent   string
		maxDepth int
		now      time.Time
		want     Reason
	}{
		{"nil parent", nil, testOther, sub, time.Minute, parent.Intent, 4, t0, ReasonBadClaims},
		{"bad target", parent, "agent-b", sub, time.Minute, parent.Intent, 4, t0, ReasonBadClaims},
		{"other intent", parent, testOther, sub, time.Minute, "billing.refund", 4, t0, ReasonOutOfScope},
		{"empty intent", parent, testOther, sub, time.Minute, "", 4, t0, ReasonOutOfScope},
		{"widened path", parent, testOther, Scope{Paths: []string{"/**"}, Methods: []string{"GET"}, Destinations: sub.Destinations}, time.Minute, parent.Intent, 4, t0, ReasonOutOfScope},
		{"dropped method limit", parent, testOther, Scope{Paths: sub.Paths, Destinations: sub.Destinations}, time.Minute, parent.Intent, 4, t0, ReasonOutOfScope},
		{"dropped destination limit", parent, testOther, Scope{Paths: sub.Paths, Methods: sub.Methods}, time.Minute, parent.Intent, 4, t0, ReasonOutOfScope},
		{"invalid child scope", parent, testOther, Scope{}, time.Minute, parent.Intent, 4, t0, ReasonBadClaims},
		{"depth over cap", deep(), testOther, sub, time.Minute, parent.Intent, 2, t0, ReasonBadChain},
		{"zero max depth", parent, testOther, sub, time.Minute, parent.Intent, 0, t0, ReasonBadChain},
		{"zero ttl", parent, testOther, sub, 0, parent.Intent, 4, t0, ReasonBadClaims},
		{"parent expired", parent, testOther, sub, time.Minute, parent.Intent, 4, t0.Add(time.Hour), ReasonExpired},
	}
	for _, tt := range tests {
		_, err := Delegate(tt.parent, tt.to, tt.scope, tt.ttl, tt.intent, tt.maxDepth, tt.now)
		if ReasonOf(err) != tt.want {
			t.Errorf("%s: err %v, want %s", tt.name, err, tt.want)
		}
	}
	// At the cap exactly is fine.
	if _, err := Delegate(deep(), testOther, sub, time.Minute, parent.Intent, 3, t0); err != nil {
		t.Fatalf("depth at cap: %v", err)
	}
}
