package mandate

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestClaimsValidate(t *testing.T) {
	tests := []struct {
		name string
		mod  func(*Claims)
		want Reason // "" = valid
	}{
		{"valid", nil, ""},
		{"no issuer", func(c *Claims) { c.Issuer = "" }, ReasonBadClaims},
		{"issuer with space", func(c *Claims) { c.Issuer = "a b" }, ReasonBadClaims},
		{"subject not SPIFFE", func(c *Claims) { c.Subject = "https://example.org/x" }, ReasonBadClaims},
		{"subject trust domain only", func(c *Claims) { c.Subject = "spiffe://example.org" }, ReasonBadClaims},
		{"subject with dot-dot", func(c *Claims) { c.Subject = "spiffe://example.org/a/../b" }, ReasonBadClaims},
		{"no audience", func(c *Claims) { c.Audience = "" }, ReasonBadClaims},
		{"short jti", func(c *Claims) { c.ID = "abc" }, ReasonBadClaims},
		{"jti bad chars", func(c *Claims) { c.ID = strings.Repeat("+", 22) }, ReasonBadClaims},
		{"no task", func(c *Claims) { c.Task = "" }, ReasonBadClaims},
		{"long task", func(c *Claims) { c.Task = strings.Repeat("t", maxLabelLen+1) }, ReasonBadClaims},
		{"no intent", func(c *Claims) { c.Intent = "" }, ReasonBadClaims},
		{"intent with newline", func(c *Claims) { c.Intent = "a\nb" }, ReasonBadClaims},
		{"no iat", func(c *Claims) { c.IssuedAt = 0 }, ReasonBadClaims},
		{"nbf before iat", func(c *Claims) { c.NotBefore = c.IssuedAt - 1 }, ReasonBadClaims},
		{"exp equals nbf", func(c *Claims) { c.Expiry = c.NotBefore }, ReasonBadClaims},
		{"exp far future", func(c *Claims) { c.Expiry = maxUnix + 1 }, ReasonBadClaims},
		{"empty scope", func(c *Claims) { c.Scope = Scope{} }, ReasonBadClaims},
		{"depth without chain", func(c *Claims) { c.Depth = 1 }, ReasonBadChain},
		{"chain without depth", func(c *Claims) { c.Chain = []Link{{ID: fixedID(2), Subject: testOther}} }, ReasonBadChain},
		{"chain bad id", func(c *Claims) { c.Chain, c.Depth = []Link{{ID: "x", Subject: testOther}}, 1 }, ReasonBadChain},
		{"chain bad subject", func(c *Claims) { c.Chain, c.Depth = []Link{{ID: fixedID(2), Subject: "agent"}}, 1 }, ReasonBadChain},
		{"chain repeats", func(c *Claims) {
			c.Chain, c.Depth = []Link{{ID: fixedID(2), Subject: testOther}, {ID: fixedID(2), Subject: testOther}}, 2
		}, ReasonBadChain},
		{"chain too deep", func(c *Claims) {
			for i := range MaxChainDepth + 1 {
				c.Chain = append(c.Chain, Link{ID: fixedID(byte(100 + i)), Subject: testOther})
			}
			c.Depth = len(c.Chain)
		}, ReasonBadChain},
	}
	for _, tt := range tests {
		c := baseClaims(t0)
		c.Issuer = testIssuer
		if tt.mod != nil {
			tt.mod(c)
		}
		err := c.Validate()
		if tt.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if ReasonOf(err) != tt.want {
			t.Errorf("%s: err %v, want %s", tt.name, err, tt.want)
		}
	}
}

func TestChainAccessors(t *testing.T) {
	c := baseClaims(t0)
	c.Chain = []Link{{ID: fixedID(2), Subject: "spiffe://example.org/agent/root"}, {ID: fixedID(3), Subject: testOther}}
	c.Depth = 2
	if got, want := c.ChainIDs(), []string{fixedID(2), fixedID(3), fixedID(1)}; !slices.Equal(got, want) {
		t.Fatalf("ChainIDs = %v, want %v", got, want)
	}
	if got, want := c.ChainSubjects(), []string{"spiffe://example.org/agent/root", testOther, testSubject}; !slices.Equal(got, want) {
		t.Fatalf("ChainSubjects = %v, want %v", got, want)
	}
}

func TestClaimsJSONFormat(t *testing.T) {
	c := baseClaims(t0)
	c.Issuer = testIssuer
	c.Chain = []Link{{ID: fixedID(2), Subject: testOther}}
	c.Depth = 1
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"iss", "sub", "aud", "jti", "iat", "nbf", "exp", "task", "intent", "scope", "chain", "depth"} {
		if _, ok := m[k]; !ok {
			t.Errorf("claim %q missing from %s", k, b)
		}
	}
	if len(m) != 12 {
		t.Errorf("payload has %d claims, want 12: %s", len(m), b)
	}
	link := m["chain"].([]any)[0].(map[string]any)
	if link["jti"] != fixedID(2) || link["sub"] != testOther {
		t.Errorf("chain link = %v", link)
	}
	scope := m["scope"].(map[string]any)
	for _, k := range []string{"destinations", "methods", "paths", "grpc"} {
		if _, ok := scope[k]; !ok {
			t.Errorf("scope field %q missing: %v", k, scope)
		}
	}
}

func TestNewID(t *testing.T) {
	a, err := NewID(nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewID(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if a == b || checkID("jti", a) != nil || checkID("jti", b) != nil {
		t.Fatalf("ids %q %q", a, b)
	}
	if _, err := NewID(bytes.NewReader([]byte{1, 2, 3})); err == nil {
		t.Fatal("short random source accepted")
	}
}

func TestSignerSign(t *testing.T) {
	f := newFixture(t, nil)
	c := baseClaims(t0)
	c.ID = ""
	c.Issuer = "spiffe://evil.org/x"
	tok, err := f.signer.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	if c.Issuer != testIssuer {
		t.Errorf("issuer %q, want the signer's", c.Issuer)
	}
	if checkID("jti", c.ID) != nil {
		t.Errorf("jti %q not filled", c.ID)
	}
	got, err := f.v.Verify(tok)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != c.ID {
		t.Errorf("verified jti %q, signed %q", got.ID, c.ID)
	}

	for _, ttl := range []time.Duration{0, -time.Minute} {
		c := baseClaims(t0)
		c.Expiry = c.IssuedAt + int64(ttl/time.Second)
		if _, err := f.signer.Sign(c); ReasonOf(err) != ReasonBadClaims {
			t.Errorf("ttl %v: err %v, want bad claims", ttl, err)
		}
	}
	bad := baseClaims(t0)
	bad.Scope = Scope{}
	if _, err := f.signer.Sign(bad); ReasonOf(err) != ReasonBadClaims {
		t.Errorf("invalid claims signed: %v", err)
	}
	if _, err := f.signer.Sign(nil); err == nil {
		t.Error("nil claims signed")
	}
}

func TestNewSignerRejects(t *testing.T) {
	kid, _, priv := seededKey(1)
	if _, err := NewSigner("", priv, testIssuer); err == nil {
		t.Error("empty kid accepted")
	}
	if _, err := NewSigner(kid, priv[:10], testIssuer); err == nil {
		t.Error("short key accepted")
	}
	if _, err := NewSigner(kid, priv, ""); err == nil {
		t.Error("empty issuer accepted")
	}
}

func TestGenerateKey(t *testing.T) {
	kid, pub, priv, err := GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	again, err := KeyID(pub)
	if err != nil || again != kid || len(kid) != 43 {
		t.Fatalf("kid %q, KeyID %q, %v", kid, again, err)
	}
	kid2, pub2, _, err := GenerateKey(rand.Reader)
	if err != nil || kid2 == kid || bytes.Equal(pub, pub2) {
		t.Fatal("two generated keys collide")
	}
	s, err := NewSigner(kid, priv, testIssuer)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewVerifier(VerifierConfig{Issuer: testIssuer, Audience: testAudience, Keys: []Key{{ID: kid, Public: pub}}, Clock: &fakeClock{t: t0}})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := s.Sign(baseClaims(t0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	// RFC 8037 appendix A.3: the RFC 7638 thumbprint of its Ed25519 key.
	x, err := base64.RawURLEncoding.DecodeString("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := KeyID(x); err != nil || got != "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k" {
		t.Fatalf("KeyID(RFC 8037 key) = %q, %v", got, err)
	}
	fixedPub := ed25519.PublicKey(x)
	if _, err := KeyID(fixedPub[:5]); err == nil {
		t.Fatal("KeyID accepted a short key")
	}
}
