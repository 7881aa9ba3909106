package identity

import (
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	proxyID = "spiffe://example.org/ns/ingress/sa/gateway"
	agentID = "spiffe://example.org/ns/agents/sa/planner"
)

func newTestResolver(t testing.TB, requireBy bool) *Resolver {
	t.Helper()
	r, err := New(Config{
		TrustDomains:   []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("example.org"), spiffeid.RequireTrustDomainFromString("partner.net")},
		TrustedProxies: []spiffeid.ID{spiffeid.RequireFromString(proxyID)},
		RequireXFCCBy:  requireBy,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func peer(principal string) *authv3.AttributeContext_Peer {
	return &authv3.AttributeContext_Peer{Principal: principal}
}

func TestNew(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"ok", Config{TrustDomains: []spiffeid.TrustDomain{td}}, false},
		{"no trust domain", Config{}, true},
		{"zero trust domain", Config{TrustDomains: []spiffeid.TrustDomain{{}}}, true},
		{"zero proxy", Config{TrustDomains: []spiffeid.TrustDomain{td}, TrustedProxies: []spiffeid.ID{{}}}, true},
		{"trust-domain-only proxy", Config{TrustDomains: []spiffeid.TrustDomain{td}, TrustedProxies: []spiffeid.ID{td.ID()}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := New(tt.cfg)
			if (err != nil) != tt.wantErr || (err == nil) == (r == nil) {
				t.Fatalf("New = %v, %v; wantErr %v", r, err, tt.wantErr)
			}
		})
	}
}

func TestCaller(t *testing.T) {
	longID := "spiffe://example.org/" + strings.Repeat("a", MaxIDLength)
	tests := []struct {
		name      string
		source    *authv3.AttributeContext_Peer
		headers   map[string]string
		requireBy bool
		want      string
		reason    Reason
	}{
		{name: "direct mTLS caller", source: peer(agentID), want: agentID},
		{name: "second trust domain", source: peer("spiffe://partner.net/bot"), want: "spiffe://partner.net/bot"},
		{name: "nil source", source: nil, reason: ReasonNoPrincipal},
		{name: "no mTLS", source: peer(""), reason: ReasonNoPrincipal},
		{name: "no mTLS never falls back to headers", source: &authv3.AttributeContext_Peer{Service: agentID},
			headers: map[string]string{"x-forwarded-client-cert": "URI=" + agentID, "x-spiffe-id": agentID}, reason: ReasonNoPrincipal},
		{name: "untrusted domain", source: peer("spiffe://evil.org/ns/agents/sa/planner"), reason: ReasonUntrustedDomain},
		{name: "suffix of trusted domain", source: peer("spiffe://evil.example.org/a"), reason: ReasonUntrustedDomain},
		{name: "trust domain only", source: peer("spiffe://example.org"), reason: ReasonTrustDomainOnly},
		{name: "dns SAN principal", source: peer("planner.example.org"), reason: ReasonBadPrincipal},
		{name: "uppercase trust domain", source: peer("spiffe://EXAMPLE.org/a"), reason: ReasonBadPrincipal},
		{name: "too long", source: peer(longID), reason: ReasonPrincipalTooLong},
		{name: "xfcc from untrusted peer is ignored", source: peer(agentID),
			headers: map[string]string{"x-forwarded-client-cert": "URI=spiffe://example.org/admin"}, want: agentID},
		{name: "malformed xfcc from untrusted peer is ignored", source: peer(agentID),
			headers: map[string]string{"x-forwarded-client-cert": `URI="`}, want: agentID},
		{name: "xfcc from untrusted peer does not rescue a bad principal", source: peer("spiffe://evil.org/gateway"),
			headers: map[string]string{"x-forwarded-client-cert": "URI=" + agentID}, reason: ReasonUntrustedDomain},
		{name: "trusted proxy forwards caller", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "By=" + proxyID + ";Hash=ab;URI=" + agentID}, want: agentID},
		{name: "trusted proxy: last element wins", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "URI=spiffe://example.org/admin," + "By=" + proxyID + ";URI=" + agentID}, want: agentID},
		{name: "trusted proxy: spoofed earlier element ignored even if bad", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "URI=spiffe://evil.org/x,URI=" + agentID}, want: agentID},
		{name: "trusted proxy: quoted URI", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": `URI="` + agentID + `"`}, want: agentID},
		{name: "trusted proxy: missing xfcc", source: peer(proxyID), reason: ReasonXFCCMissing},
		{name: "trusted proxy: empty xfcc", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": ""}, reason: ReasonXFCCMissing},
		{name: "trusted proxy: header name is case-sensitive (Envoy lowercases)", source: peer(proxyID),
			headers: map[string]string{"X-Forwarded-Client-Cert": "URI=" + agentID}, reason: ReasonXFCCMissing},
		{name: "trusted proxy: malformed xfcc", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": `URI="` + agentID}, reason: ReasonBadXFCC},
		{name: "trusted proxy: malformed earlier element", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "Foo=1,URI=" + agentID}, reason: ReasonBadXFCC},
		{name: "trusted proxy: too long xfcc", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "Cert=" + strings.Repeat("a", MaxXFCCLength) + ";URI=" + agentID}, reason: ReasonXFCCTooLong},
		{name: "trusted proxy: last element has no URI", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "URI=" + agentID + ",Hash=ab;DNS=planner.example.org"}, reason: ReasonXFCCNoURI},
		{name: "trusted proxy: several URIs", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "URI=" + agentID + ";URI=spiffe://example.org/admin"}, reason: ReasonXFCCAmbiguousURI},
		{name: "trusted proxy: empty URI", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "URI="}, reason: ReasonBadPrincipal},
		{name: "trusted proxy: URI not spiffe", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "URI=https://example.org/a"}, reason: ReasonBadPrincipal},
		{name: "trusted proxy: URI with dot segment", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "URI=spiffe://example.org/a/../admin"}, reason: ReasonBadPrincipal},
		{name: "trusted proxy: URI trust domain only", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "URI=spiffe://example.org"}, reason: ReasonTrustDomainOnly},
		{name: "trusted proxy: URI untrusted domain", source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "URI=spiffe://evil.org/a"}, reason: ReasonUntrustedDomain},
		{name: "require By: matches", requireBy: true, source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "By=" + proxyID + ";URI=" + agentID}, want: agentID},
		{name: "require By: missing", requireBy: true, source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "URI=" + agentID}, reason: ReasonXFCCUntrustedProxy},
		{name: "require By: other proxy", requireBy: true, source: peer(proxyID),
			headers: map[string]string{"x-forwarded-client-cert": "By=spiffe://example.org/other;URI=" + agentID}, reason: ReasonXFCCUntrustedProxy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestResolver(t, tt.requireBy)
			// The second call is answered from the resolver's memo of
			// validated principals: the same verdict.
			for _, pass := range []string{"first", "remembered"} {
				id, err := r.Caller(tt.source, tt.headers)
				if got := reasonOf(t, err); got != tt.reason {
					t.Fatalf("%s call: Caller reason = %q (%v), want %q", pass, got, err, tt.reason)
				}
				if id.String() != tt.want {
					t.Fatalf("%s call: Caller = %q, want %q", pass, id, tt.want)
				}
			}
		})
	}
}

func TestDestination(t *testing.T) {
	tests := []struct {
		name   string
		dest   *authv3.AttributeContext_Peer
		want   string
		reason Reason
	}{
		{"nil", nil, "", ""},
		{"empty", peer(""), "", ""},
		{"valid", peer("spiffe://example.org/ns/tools/sa/search"), "spiffe://example.org/ns/tools/sa/search", ""},
		{"untrusted domain", peer("spiffe://evil.org/tools"), "", ReasonUntrustedDestination},
		{"not spiffe", peer("search.example.org"), "", ReasonBadDestination},
		{"trust domain only", peer("spiffe://example.org"), "", ReasonBadDestination},
		{"trailing slash", peer("spiffe://example.org/tools/"), "", ReasonBadDestination},
	}
	r := newTestResolver(t, false)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, pass := range []string{"first", "remembered"} {
				got, err := r.Destination(tt.dest)
				if rs := reasonOf(t, err); rs != tt.reason {
					t.Fatalf("%s call: Destination reason = %q (%v), want %q", pass, rs, err, tt.reason)
				}
				if got != tt.want {
					t.Fatalf("%s call: Destination = %q, want %q", pass, got, tt.want)
				}
			}
		})
	}
}

// TestMemoIsPerResolver: a principal one resolver trusts (and remembers)
// is still refused by a resolver with other trust domains, and a trusted
// proxy's ID is remembered as a proxy, never as a direct caller.
func TestMemoIsPerResolver(t *testing.T) {
	wide := newTestResolver(t, false)
	narrow, err := New(Config{TrustDomains: []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("partner.net")}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := wide.Caller(peer(agentID), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := narrow.Caller(peer(agentID), nil); reasonOf(t, err) != ReasonUntrustedDomain {
			t.Fatalf("narrow resolver: %v, want %s", err, ReasonUntrustedDomain)
		}
		if _, err := wide.Caller(peer(proxyID), nil); reasonOf(t, err) != ReasonXFCCMissing {
			t.Fatalf("proxy without XFCC: %v, want %s", err, ReasonXFCCMissing)
		}
	}
}

func TestCallerAllocs(t *testing.T) {
	r := newTestResolver(t, false)
	src := peer(agentID)
	h := map[string]string{"content-type": "application/json"}
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := r.Caller(src, h); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Caller allocates %v times for a direct valid caller, want 0", allocs)
	}
}

func BenchmarkCaller(b *testing.B) {
	r := newTestResolver(b, false)
	src := peer(agentID)
	h := map[string]string{"content-type": "application/json", "x-mandate-intent": "search"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Caller(src, h); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCallerXFCC(b *testing.B) {
	r := newTestResolver(b, false)
	src := peer(proxyID)
	h := map[string]string{"x-forwarded-client-cert": "By=" + proxyID + ";Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject=\"CN=planner,O=example\";URI=" + agentID}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Caller(src, h); err != nil {
			b.Fatal(err)
		}
	}
}
