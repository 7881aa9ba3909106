package xdsclient

import (
	"google.golang.org/grpc"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// TransportOptions are the dial options a connection to mandate-cp
// wants: a fixed flow-control window (mandatev1.FlowWindowBytes), so that
// no response costs a BDP PING. Add them to the options the connection
// is made with.
func TransportOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithInitialWindowSize(mandatev1.FlowWindowBytes),
		grpc.WithInitialConnWindowSize(mandatev1.FlowWindowBytes),
	}
}
