package instance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/mandate-dev/mandate/internal/transport"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

func tlsPeer(t *testing.T, uri string) context.Context {
	t.Helper()
	cert := &x509.Certificate{}
	if uri != "" {
		u, err := url.Parse(uri)
		if err != nil {
			t.Fatal(err)
		}
		cert.URIs = []*url.URL{u}
	}
	return peer.NewContext(context.Background(), &peer.Peer{
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}}})
}

func TestPeerKindFromSPIFFEID(t *testing.T) {
	envoyIDs := []string{"spiffe://example.org/envoy/*", "spiffe://example.org/mandate/both"}
	opt, err := peerKinds([]string{"spiffe://example.org/mandate/authz", "spiffe://example.org/mandate/both"}, envoyIDs)
	if err != nil || opt == nil {
		t.Fatalf("peerKinds: %v", err)
	}
	if _, err := peerKinds(nil, envoyIDs); err == nil {
		t.Fatal("peerKinds accepted no replica patterns")
	}
	if _, err := peerKinds([]string{"spiffe://example.org/a"}, []string{"example.org/envoy"}); err == nil {
		t.Fatal("peerKinds accepted an Envoy ID that is not a SPIFFE ID pattern")
	}
	repAuth, envAuth := mustAuth(t, "spiffe://example.org/mandate/authz", "spiffe://example.org/mandate/both"),
		mustAuth(t, "spiffe://example.org/envoy/*", "spiffe://example.org/mandate/both")
	tests := []struct {
		name    string
		id      string
		want    xdsserver.NodeKind
		wantErr string
	}{
		{"replica", "spiffe://example.org/mandate/authz", xdsserver.NodeReplica, ""},
		{"envoy", "spiffe://example.org/envoy/tickets", xdsserver.NodeEnvoy, ""},
		{"both", "spiffe://example.org/mandate/both", xdsserver.NodeUnknown, "both"},
		{"neither", "spiffe://example.org/agent/a", xdsserver.NodeUnknown, "neither"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := kindOf(spiffeid.RequireFromString(tt.id), repAuth, envAuth)
			if got != tt.want || (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("kindOf = %q, %v; want %q, error mentioning %q", got, err, tt.want, tt.wantErr)
			}
		})
	}
	if k, err := kindOf(spiffeid.RequireFromString("spiffe://example.org/envoy/x"), repAuth, nil); err == nil || k != xdsserver.NodeUnknown {
		t.Fatalf("Envoy identity without --envoy-id: %q %v", k, err)
	}
	// Plaintext (--plaintext, loopback): no identity, no error.
	if k, err := peerKind(context.Background(), repAuth, envAuth); err != nil || k != xdsserver.NodeUnknown {
		t.Fatalf("plaintext peer: %q %v", k, err)
	}
	// A TLS peer whose ID no go-spiffe credentials proved is refused,
	// whatever its certificate says.
	if k, err := peerKind(tlsPeer(t, "spiffe://example.org/mandate/authz"), repAuth, envAuth); err == nil || k != xdsserver.NodeUnknown {
		t.Fatalf("hand-built TLS peer: %q %v", k, err)
	}
}

func mustAuth(t *testing.T, pats ...string) tlsconfig.Authorizer {
	t.Helper()
	a, err := transport.Authorizer(pats)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
