package instance

import (
	"context"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc/peer"

	"github.com/mandate-dev/mandate/internal/transport"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// peerKinds returns the xDS server option that classifies each stream
// by its peer's SPIFFE ID: a replica ID pattern makes a replica
// (mandate.v1 types only), an Envoy ID pattern an Envoy (Listener and
// Cluster only). An identity matching both is refused. Without mTLS
// (plaintext) the first type a stream asks for decides.
func peerKinds(replicaIDs, envoyIDs []string) (xdsserver.Option, error) {
	rep, err := transport.Authorizer(replicaIDs)
	if err != nil {
		return nil, fmt.Errorf("replica IDs: %w", err)
	}
	var env tlsconfig.Authorizer
	if len(envoyIDs) > 0 {
		if env, err = transport.Authorizer(envoyIDs); err != nil {
			return nil, fmt.Errorf("Envoy IDs: %w", err)
		}
	}
	return xdsserver.WithPeerKind(func(ctx context.Context) (xdsserver.NodeKind, error) {
		return peerKind(ctx, rep, env)
	}), nil
}

func peerKind(ctx context.Context, rep, env tlsconfig.Authorizer) (xdsserver.NodeKind, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil || p.AuthInfo.AuthType() == "insecure" {
		// Plaintext (loopback only): no identity, the first type decides.
		return xdsserver.NodeUnknown, nil
	}
	id, err := transport.PeerID(ctx)
	if err != nil {
		return xdsserver.NodeUnknown, fmt.Errorf("%s peer: %w", p.AuthInfo.AuthType(), err)
	}
	return kindOf(id, rep, env)
}

// kindOf classifies a proven peer SPIFFE ID. The authorizers match on the
// ID only (transport.Authorizer): the handshake already verified the chain.
func kindOf(id spiffeid.ID, rep, env tlsconfig.Authorizer) (xdsserver.NodeKind, error) {
	isRep := rep(id, nil) == nil
	isEnv := env != nil && env(id, nil) == nil
	switch {
	case isRep && isEnv:
		return xdsserver.NodeUnknown, fmt.Errorf("peer %s matches both --replica-id and --envoy-id", id)
	case isRep:
		return xdsserver.NodeReplica, nil
	case isEnv:
		return xdsserver.NodeEnvoy, nil
	}
	return xdsserver.NodeUnknown, fmt.Errorf("peer %s matches neither --replica-id nor --envoy-id", id)
}
