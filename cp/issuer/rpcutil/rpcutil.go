// Package rpcutil holds the small gRPC helpers the mandate services of
// mandate-cp share (their service code is generated in xds/mandatev1): the
// caller's identity from its mTLS certificate, and status-code mapping and
// field limits for request handlers.
package rpcutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/internal/transport"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// PlaintextActor is the identity of a caller on a plaintext loopback
// connection (--plaintext dev mode).
const PlaintextActor = "plaintext:loopback"

// DevCallerHeader is the metadata key a plaintext loopback caller may use,
// in dev mode only, to say which SPIFFE ID it acts as (mandatectl --dev-as).
const DevCallerHeader = "x-mandate-dev-caller"

// Identify returns the caller's identity: the SPIFFE ID of its X509-SVID
// on an mTLS connection (transport.PeerID). On a plaintext connection from loopback it
// returns PlaintextActor, or, when dev is set and the caller sent
// DevCallerHeader with a SPIFFE ID, that ID. Any other connection is
// refused with Unauthenticated.
func Identify(ctx context.Context, dev bool) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", status.Error(codes.Unauthenticated, "no peer")
	}
	id, err := transport.PeerID(ctx)
	if err == nil {
		return id.String(), nil
	}
	if !errors.Is(err, transport.ErrNotMTLS) {
		return "", status.Errorf(codes.Unauthenticated, "%v", err)
	}
	if !dev || !loopback(p.Addr) {
		return "", status.Error(codes.Unauthenticated, "caller is not on an mTLS connection")
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(DevCallerHeader); len(v) == 1 {
			id, err := identity.ParseID(v[0])
			if err != nil {
				return "", status.Errorf(codes.InvalidArgument, "%s: %v", DevCallerHeader, err)
			}
			return id.String(), nil
		} else if len(v) > 1 {
			return "", status.Errorf(codes.InvalidArgument, "%s given %d times", DevCallerHeader, len(v))
		}
	}
	return PlaintextActor, nil
}

func loopback(a net.Addr) bool {
	if a == nil {
		return false
	}
	if a.Network() == "unix" {
		return true
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Code maps an error to a gRPC status error: errors that already carry a
// status keep it, context errors become Canceled/DeadlineExceeded, the
// rest get code c.
func Code(c codes.Code, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var down *store.UnavailableError
	switch {
	case errors.As(err, &down):
		return status.Error(codes.Unavailable, down.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(c, err.Error())
}

// CheckLen refuses a string field longer than max bytes.
func CheckLen(field, s string, max int) error {
	if len(s) > max {
		return status.Errorf(codes.InvalidArgument, "%s: %d bytes, limit %d", field, len(s), max)
	}
	return nil
}

// Trim shortens s for a log or audit detail.
func Trim(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// Join is strings.Join for details, with "-" for an empty list.
func Join(l []string) string {
	if len(l) == 0 {
		return "-"
	}
	return fmt.Sprint(strings.Join(l, ","))
}
