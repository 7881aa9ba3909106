// Package transport sets up the gRPC transport security Mandate's servers
// and clients use: mTLS with X509-SVIDs from the SPIFFE Workload API, peers
// authorized by SPIFFE ID, and plaintext only on loopback, only when
// explicitly asked for.
package transport

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"

	"github.com/mandate-dev/mandate/policies/pattern"
)

// Config says how to secure one side of a connection.
type Config struct {
	// WorkloadAPI is the Workload API socket address (unix:///path). When
	// empty, the SPIFFE_ENDPOINT_SOCKET environment variable is used.
	WorkloadAPI string
	// Allowed are SPIFFE ID patterns (policies/pattern globs) of the peers
	// to accept. Required with mTLS.
	Allowed []string
	// Insecure selects plaintext. Only allowed on loopback addresses.
	Insecure bool
}

// Source is an open Workload API X.509 source; Close releases it.
type Source struct {
	x509 *workloadapi.X509Source
}

// Close releases the source.
func (s *Source) Close() error {
	if s == nil || s.x509 == nil {
		return nil
	}
	return s.x509.Close()
}

// ID returns the workload's own SPIFFE ID.
func (s *Source) ID() (spiffeid.ID, error) {
	svid, err := s.x509.GetX509SVID()
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("transport: %w", err)
	}
	return svid.ID, nil
}

// Open connects to the Workload API and waits for the first SVID.
func Open(ctx context.Context, workloadAPI string) (*Source, error) {
	var opts []workloadapi.X509SourceOption
	if workloadAPI != "" {
		opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(workloadAPI)))
	}
	src, err := workloadapi.NewX509Source(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("transport: workload API: %w", err)
	}
	return &Source{x509: src}, nil
}

// Authorizer accepts peers whose SPIFFE ID matches one of the patterns.
func Authorizer(allowed []string) (tlsconfig.Authorizer, error) {
	if len(allowed) == 0 {
		return nil, errors.New("transport: no allowed peer SPIFFE IDs configured")
	}
	pats := make([]pattern.Pattern, 0, len(allowed))
	for _, a := range allowed {
		if !strings.HasPrefix(a, "spiffe://") {
			return nil, fmt.Errorf("transport: allowed peer %q is not a SPIFFE ID pattern", a)
		}
		p, err := pattern.Compile(a)
		if err != nil {
			return nil, fmt.Errorf("transport: allowed peer: %w", err)
		}
		pats = append(pats, p)
	}
	return func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		s := id.String()
		for _, p := range pats {
			if p.Match(s) {
				return nil
			}
		}
		return fmt.Errorf("transport: peer %q is not allowed", s)
	}, nil
}

// ServerOption returns the grpc.ServerOption securing a server listening
// on listenAddr, and the source to close when the server stops (nil for
// plaintext).
func ServerOption(ctx context.Context, listenAddr string, cfg Config) (grpc.ServerOption, *Source, error) {
	src, auth, err := prepare(ctx, listenAddr, cfg)
	if err != nil || src == nil {
		return grpc.Creds(insecure.NewCredentials()), nil, err
	}
	return grpc.Creds(ServerCredentials(src.x509, src.x509, auth)), src, nil
}

// ServerCredentials are the mTLS credentials of Mandate's gRPC servers:
// go-spiffe's, which present svid, require a client X509-SVID verified
// against bundle and authorized by auth, and record the peer's SPIFFE ID
// for PeerID. A client certificate without exactly one SPIFFE ID URI SAN
// fails the handshake.
func ServerCredentials(svid x509svid.Source, bundle x509bundle.Source, auth tlsconfig.Authorizer) credentials.TransportCredentials {
	return grpccredentials.MTLSServerCredentials(svid, bundle, auth)
}

// ErrNotMTLS is PeerID's error for a peer on a connection that is not TLS
// (plaintext, unix socket): callers decide whether that transport is
// acceptable.
var ErrNotMTLS = errors.New("transport: peer is not on an mTLS connection")

// PeerID is the one way Mandate reads the SPIFFE ID of the caller of ctx:
// the ID go-spiffe's credentials (ServerCredentials) proved in the
// handshake (grpccredentials.PeerIDFromContext). A peer on a non-TLS
// connection gets ErrNotMTLS; a TLS peer without a proven SPIFFE ID
// (credentials other than ServerCredentials) gets another error.
func PeerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, errors.New("transport: no peer")
	}
	if id, ok := grpccredentials.PeerIDFromPeer(p); ok {
		return id, nil
	}
	if p.AuthInfo == nil || p.AuthInfo.AuthType() != "tls" {
		return spiffeid.ID{}, ErrNotMTLS
	}
	return spiffeid.ID{}, errors.New("transport: TLS peer without a SPIFFE ID proven by the server credentials")
}

// DialOption returns the grpc.DialOption for a client of target.
func DialOption(ctx context.Context, target string, cfg Config) (grpc.DialOption, *Source, error) {
	src, auth, err := prepare(ctx, target, cfg)
	if err != nil || src == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil, err
	}
	return grpc.WithTransportCredentials(grpccredentials.MTLSClientCredentials(src.x509, src.x509, auth)), src, nil
}

// prepare checks a plaintext address (returning a nil source), or opens
// the Workload API source and the peer authorizer for mTLS.
func prepare(ctx context.Context, addr string, cfg Config) (*Source, tlsconfig.Authorizer, error) {
	if cfg.Insecure {
		return nil, nil, CheckLoopback(addr)
	}
	auth, err := Authorizer(cfg.Allowed)
	if err != nil {
		return nil, nil, err
	}
	src, err := Open(ctx, cfg.WorkloadAPI)
	if err != nil {
		return nil, nil, err
	}
	return src, auth, nil
}

// CheckLoopback refuses an address that is not on loopback (127.0.0.0/8,
// ::1, localhost) or a unix socket.
func CheckLoopback(addr string) error {
	if strings.HasPrefix(addr, "unix:") || strings.HasPrefix(addr, "/") {
		return nil
	}
	addr = strings.TrimPrefix(addr, "dns:///")
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("transport: plaintext address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("transport: plaintext is allowed only on a loopback address, not %q", addr)
	}
	return nil
}
