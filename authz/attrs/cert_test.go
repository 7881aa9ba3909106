package attrs

import (
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/internal/envoyreq"
	"github.com/mandate-dev/mandate/internal/testcert"
)

func newTestExtractor(t testing.TB, requireCert bool) *Extractor {
	t.Helper()
	res, err := identity.New(identity.Config{TrustDomains: []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("example.org")}})
	if err != nil {
		t.Fatal(err)
	}
	x, err := New(Config{Identity: res, RequirePeerCertificate: requireCert})
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestPeerCertificate(t *testing.T) {
	const agent = "spiffe://example.org/agent/a1"
	good := testcert.LeafPEM(t, agent)
	for _, tc := range []struct {
		name    string
		cert    string
		require bool
		reason  string
	}{
		{"matching SVID", good, false, ""},
		{"matching SVID, required", good, true, ""},
		{"absent, not required", "", false, ""},
		{"absent, required", "", true, ReasonBadCertificate},
		{"SAN of another workload", testcert.LeafPEM(t, "spiffe://example.org/agent/other"), false, ReasonBadCertificate},
		{"two URI SANs", testcert.LeafPEM(t, agent, "spiffe://example.org/agent/other"), false, ReasonBadCertificate},
		{"no URI SAN", testcert.LeafPEM(t), false, ReasonBadCertificate},
		{"not PEM", "garbage", false, ReasonBadCertificate},
		{"bad escape", "%zz", false, ReasonBadCertificate},
		{"two certificates", good + good, false, ReasonBadCertificate},
		{"too large", strings.Repeat("A", MaxCertificateBytes+1), false, ReasonBadCertificate},
	} {
		x := newTestExtractor(t, tc.require)
		req := envoyreq.Build(envoyreq.Params{Principal: agent, Path: "/", Host: "h"})
		req.Attributes.Source.Certificate = tc.cert
		for pass := 0; pass < 2; pass++ { // the second pass is a cache hit
			var a Attributes
			err := x.Extract(req, time.Unix(100, 0), &a)
			if got := reasonOrEmpty(err); got != tc.reason {
				t.Errorf("%s (pass %d): reason %q (%v), want %q", tc.name, pass, got, err, tc.reason)
			}
		}
	}
}

func reasonOrEmpty(err error) string {
	if err == nil {
		return ""
	}
	return ReasonOf(err)
}

// BenchmarkExtractWithCertificate is the extraction cost with a peer
// certificate present, as on every request from an Envoy with
// include_peer_certificate: the certificate's verdict is cached.
func BenchmarkExtractWithCertificate(b *testing.B) {
	x := newTestExtractor(b, true)
	req := envoyreq.Build(envoyreq.Params{Principal: "spiffe://example.org/agent/a1", Path: "/tickets/T-1", Host: "h"})
	req.Attributes.Source.Certificate = testcert.LeafPEM(b, "spiffe://example.org/agent/a1")
	run := func(req *authv3.CheckRequest) {
		var a Attributes
		if err := x.Extract(req, time.Unix(100, 0), &a); err != nil {
			b.Fatal(err)
		}
	}
	run(req)
	b.ReportAllocs()
	for b.Loop() {
		run(req)
	}
}
