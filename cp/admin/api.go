package admin

import (
	"google.golang.org/grpc"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// ServiceName is the full name of the Admin service
// (mandatev1.Admin_ServiceDesc.ServiceName, from proto/mandate/v1/admin.proto).
const ServiceName = "mandate.v1.Admin"

// Client calls the Admin service: the generated mandatev1.AdminClient.
//
// Deprecated: use mandatev1.NewAdminClient.
type Client struct{ mandatev1.AdminClient }

// NewClient returns a client over cc.
//
// Deprecated: use mandatev1.NewAdminClient.
func NewClient(cc grpc.ClientConnInterface) *Client {
	return &Client{AdminClient: mandatev1.NewAdminClient(cc)}
}
