package authz

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Limits bound what one client can hold of a Check server.
type Limits struct {
	// MaxConcurrentStreams per HTTP/2 connection (default 1024).
	MaxConcurrentStreams uint32
	// MaxConnectionIdle closes a connection without RPCs for this long
	// (default 5m); MaxConnectionAge closes any connection after this long
	// (default 30m, with a 30s grace for RPCs in flight).
	MaxConnectionIdle time.Duration
	MaxConnectionAge  time.Duration
	// MinPingInterval: a client pinging more often is disconnected
	// (keepalive enforcement; default 10s).
	MinPingInterval time.Duration
	// MaxRecvMsgBytes is the transport's hard cap on a message (default
	// 4x the codec's limit); above it gRPC itself refuses the RPC.
	MaxRecvMsgBytes int
}

// ServerOptions returns the gRPC server options of a Check server: the
// codec (undecodable or oversized requests become denies) and the limits.
func ServerOptions(codec *Codec, l Limits) []grpc.ServerOption {
	if l.MaxConcurrentStreams == 0 {
		l.MaxConcurrentStreams = 1024
	}
	if l.MaxConnectionIdle == 0 {
		l.MaxConnectionIdle = 5 * time.Minute
	}
	if l.MaxConnectionAge == 0 {
		l.MaxConnectionAge = 30 * time.Minute
	}
	if l.MinPingInterval == 0 {
		l.MinPingInterval = 10 * time.Second
	}
	if l.MaxRecvMsgBytes == 0 {
		l.MaxRecvMsgBytes = 4 * codec.limit
	}
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(codec),
		grpc.MaxRecvMsgSize(l.MaxRecvMsgBytes),
		grpc.MaxConcurrentStreams(l.MaxConcurrentStreams),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle:     l.MaxConnectionIdle,
			MaxConnectionAge:      l.MaxConnectionAge,
			MaxConnectionAgeGrace: 30 * time.Second,
			Time:                  2 * time.Minute,
			Timeout:               20 * time.Second,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: l.MinPingInterval, PermitWithoutStream: true}),
	}
}
