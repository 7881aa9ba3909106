package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/mandate-dev/mandate/internal/testcert"
)

// peerIDServer serves any method by answering with what PeerID says of
// the caller, in the status message: "id=<SPIFFE ID>", "notmtls" or
// "err=<error>".
func peerIDServer(t *testing.T, creds credentials.TransportCredentials) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(grpc.Creds(creds), grpc.UnknownServiceHandler(func(_ any, st grpc.ServerStream) error {
		id, err := PeerID(st.Context())
		switch {
		case errors.Is(err, ErrNotMTLS):
			return status.Error(codes.FailedPrecondition, "notmtls")
		case err != nil:
			return status.Error(codes.FailedPrecondition, "err="+err.Error())
		}
		return status.Error(codes.FailedPrecondition, "id="+id.String())
	}))
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

func askPeerID(t *testing.T, addr string, creds credentials.TransportCredentials) (codes.Code, string) {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = cc.Invoke(ctx, "/test.PeerID/Ask", &emptypb.Empty{}, &emptypb.Empty{})
	s := status.Convert(err)
	return s.Code(), s.Message()
}

func clientTLS(cert tls.Certificate) credentials.TransportCredentials {
	return credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true}) //nolint:gosec // test: the server checks the client
}

// TestPeerIDOnlyFromSPIFFECredentials: the caller's SPIFFE ID is the one
// go-spiffe's server credentials proved; a client certificate with no or
// two URI SANs, or from another trust root, is refused in the handshake,
// and a TLS connection made by other credentials yields no ID at all.
func TestPeerIDOnlyFromSPIFFECredentials(t *testing.T) {
	ca, other := testcert.NewCA(t, "example.org"), testcert.NewCA(t, "example.org")
	const cp, agent = "spiffe://example.org/mandate/cp", "spiffe://example.org/agent/a"
	spiffeSrv := peerIDServer(t, ServerCredentials(ca.SVID(t, cp), ca.Bundle(), tlsconfig.AuthorizeAny()))
	handBuilt := peerIDServer(t, credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{ca.Leaf(t, cp)},
		ClientAuth: tls.RequireAnyClientCert, MinVersion: tls.VersionTLS12}))
	plain := peerIDServer(t, insecure.NewCredentials())
	tests := []struct {
		name  string
		addr  string
		creds credentials.TransportCredentials
		code  codes.Code
		msg   string
	}{
		{"SVID", spiffeSrv, clientTLS(ca.Leaf(t, agent)), codes.FailedPrecondition, "id=" + agent},
		{"no URI SAN", spiffeSrv, clientTLS(ca.Leaf(t)), codes.Unavailable, ""},
		{"two URI SANs", spiffeSrv, clientTLS(ca.Leaf(t, agent, "spiffe://example.org/mandate/operator")), codes.Unavailable, ""},
		{"URI SAN not a SPIFFE ID", spiffeSrv, clientTLS(ca.Leaf(t, "https://example.org/agent/a")), codes.Unavailable, ""},
		{"another root", spiffeSrv, clientTLS(other.Leaf(t, agent)), codes.Unavailable, ""},
		{"hand-built TLS credentials", handBuilt, clientTLS(ca.Leaf(t, agent)), codes.FailedPrecondition, "err="},
		{"plaintext", plain, insecure.NewCredentials(), codes.FailedPrecondition, "notmtls"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, msg := askPeerID(t, tt.addr, tt.creds)
			if code != tt.code || !strings.HasPrefix(msg, tt.msg) || (tt.msg == "id="+agent && msg != tt.msg) {
				t.Fatalf("got %v %q, want %v %q", code, msg, tt.code, tt.msg)
			}
		})
	}
	if _, err := PeerID(context.Background()); err == nil || errors.Is(err, ErrNotMTLS) {
		t.Fatalf("PeerID without a peer: %v", err)
	}
}
