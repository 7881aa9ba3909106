package xdsserver

import (
	"google.golang.org/grpc"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TransportOptions are the gRPC server options the xDS listener wants: a
// fixed flow-control window (mandatev1.FlowWindowBytes), so that no ACK
// costs a BDP PING. Add them to the grpc.Server that Register serves on.
func TransportOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.InitialWindowSize(mandatev1.FlowWindowBytes),
		grpc.InitialConnWindowSize(mandatev1.FlowWindowBytes),
	}
}
