package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/mandate-dev/mandate/internal/transport"
	"github.com/mandate-dev/mandate/policies/pattern"
)

// ServiceName is the full name of the Admin service
// (mandatev1.Admin_ServiceDesc.ServiceName, from proto/mandate/v1/admin.proto).
const ServiceName = "mandate.v1.Admin"

// PlaintextActor is the actor of calls over a plaintext (dev, loopback)
// connection.
const PlaintextActor = "plaintext:loopback"

// Peer is who is calling, as the transport proved it.
type Peer struct {
	// Actor is the SPIFFE ID (mTLS), "unix:uid=<uid>" (unix socket) or
	// PlaintextActor. It is what the audit trail records.
	Actor string
	// SPIFFEID is set for mTLS peers.
	SPIFFEID string
	// UID is set (>= 0) for unix socket peers, else -1.
	UID int
}

// PeerOf identifies the caller of ctx from its transport: the SPIFFE ID of
// the mTLS peer certificate, the SO_PEERCRED uid of a unix socket peer, or
// plaintext. It fails on TLS without a SPIFFE ID proven by the server's
// go-spiffe credentials (transport.PeerID).
func PeerOf(ctx context.Context) (Peer, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Peer{}, errors.New("admin: no peer")
	}
	switch ai := p.AuthInfo.(type) {
	case UnixAuthInfo:
		return Peer{Actor: "unix:uid=" + strconv.Itoa(ai.UID), UID: ai.UID}, nil
	case nil:
		return Peer{Actor: PlaintextActor, UID: -1}, nil
	default:
		if ai.AuthType() == "insecure" {
			return Peer{Actor: PlaintextActor, UID: -1}, nil
		}
		id, err := transport.PeerID(ctx)
		if err != nil {
			return Peer{}, fmt.Errorf("admin: %s peer: %w", ai.AuthType(), err)
		}
		return Peer{Actor: id.String(), SPIFFEID: id.String(), UID: -1}, nil
	}
}

type peerKey struct{}

// CallerFrom returns the peer the interceptor authorized.
func CallerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// DefaultOperator is the operator identity admitted when none is
// configured: exactly spiffe://<trustDomain>/mandate/operator, not a glob,
// so that .../mandate/operatorX or .../mandate/operator-2 is no operator.
func DefaultOperator(trustDomain string) string {
	return "spiffe://" + trustDomain + "/mandate/operator"
}

// AuthConfig says who may call the Admin service.
type AuthConfig struct {
	// Operators are SPIFFE ID patterns of mTLS peers allowed to call
	// Admin. A pattern without '*' is one exact SPIFFE ID.
	Operators []string
	// AllowPlaintext admits calls over plaintext connections (the server
	// is on loopback with --plaintext).
	AllowPlaintext bool
	// UID is the uid of this process: unix socket peers with this uid, or
	// root, are admitted.
	UID int
	// Registerer receives the admin call metrics.
	Registerer prometheus.Registerer
}

// Auth authorizes Admin calls and counts them.
type Auth struct {
	ops       []pattern.Pattern
	plaintext bool
	uid       int
	calls     *prometheus.CounterVec
	latency   *prometheus.HistogramVec
}

// NewAuth validates cfg.
func NewAuth(cfg AuthConfig) (*Auth, error) {
	a := &Auth{plaintext: cfg.AllowPlaintext, uid: cfg.UID}
	for _, o := range cfg.Operators {
		if !strings.HasPrefix(o, "spiffe://") {
			return nil, fmt.Errorf("admin: operator %q is not a SPIFFE ID pattern", o)
		}
		p, err := pattern.Compile(o)
		if err != nil {
			return nil, fmt.Errorf("admin: operator pattern: %w", err)
		}
		a.ops = append(a.ops, p)
	}
	a.calls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "mandate", Subsystem: "cp", Name: "admin_requests_total",
		Help: "Admin API calls by method and gRPC code.",
	}, []string{"method", "code"})
	a.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "mandate", Subsystem: "cp", Name: "admin_request_seconds",
		Help:    "Admin API call latency by method.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"method"})
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{a.calls, a.latency} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("admin: register metrics: %w", err)
			}
		}
	}
	return a, nil
}

// Authorize reports whether p may call the Admin service.
func (a *Auth) Authorize(p Peer) error {
	switch {
	case p.SPIFFEID != "":
		for _, o := range a.ops {
			if o.Match(p.SPIFFEID) {
				return nil
			}
		}
		return fmt.Errorf("%s is not an operator", p.SPIFFEID)
	case p.UID >= 0:
		if p.UID == 0 || p.UID == a.uid {
			return nil
		}
		return fmt.Errorf("uid %d may not use the admin socket", p.UID)
	case p.Actor == PlaintextActor && a.plaintext:
		return nil
	}
	return errors.New("unauthenticated transport")
}

// waitAckedMethod is open to every authenticated peer of the listener.
const waitAckedMethod = "WaitAcked"

// Unary is the interceptor: Admin calls are authorized and counted; calls
// to other services pass through with the caller (when known) in the
// context, for their own authorization.
func (a *Auth) Unary() grpc.UnaryServerInterceptor {
	prefix := "/" + ServiceName + "/"
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		p, perr := PeerOf(ctx)
		if perr == nil {
			ctx = context.WithValue(ctx, peerKey{}, p)
		}
		if !strings.HasPrefix(info.FullMethod, prefix) {
			return h(ctx, req)
		}
		method := strings.TrimPrefix(info.FullMethod, prefix)
		start := time.Now()
		var (
			resp any
			err  error
		)
		switch {
		case perr != nil:
			err = status.Error(codes.Unauthenticated, "admin: caller identity unknown")
		case method == waitAckedMethod:
			// Waiting for propagation reads nothing but versions and
			// counts: every peer the listener admitted may wait for the
			// change it made (an orchestrator's `complete --wait`).
			resp, err = h(ctx, req)
		default:
			if aerr := a.Authorize(p); aerr != nil {
				err = status.Error(codes.PermissionDenied, "admin: "+aerr.Error())
			} else {
				resp, err = h(ctx, req)
			}
		}
		a.calls.WithLabelValues(method, status.Code(err).String()).Inc()
		a.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
		return resp, err
	}
}

// UnixAuthInfo is the AuthInfo of a unix socket connection: the peer
// process's credentials from SO_PEERCRED.
type UnixAuthInfo struct {
	credentials.CommonAuthInfo
	UID, GID, PID int
}

// AuthType implements credentials.AuthInfo.
func (UnixAuthInfo) AuthType() string { return "unix-peercred" }

// UnixCredentials are server transport credentials for a unix socket
// listener: no encryption (the kernel carries the bytes), the peer's uid
// read with SO_PEERCRED at accept.
type UnixCredentials struct{}

// ServerHandshake reads the peer credentials of a unix connection.
func (UnixCredentials) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("admin: unix credentials on a non-unix connection")
	}
	uid, gid, pid, err := peerCred(uc)
	if err != nil {
		return nil, nil, fmt.Errorf("admin: peer credentials: %w", err)
	}
	return c, UnixAuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		UID: uid, GID: gid, PID: pid}, nil
}

// ClientHandshake is not supported: clients dial the socket with insecure
// credentials.
func (UnixCredentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("admin: unix credentials are server-side only")
}

// Info implements credentials.TransportCredentials.
func (UnixCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "unix-peercred"}
}

// Clone implements credentials.TransportCredentials.
func (UnixCredentials) Clone() credentials.TransportCredentials { return UnixCredentials{} }

// OverrideServerName implements credentials.TransportCredentials.
func (UnixCredentials) OverrideServerName(string) error { return nil }
