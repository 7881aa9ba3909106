package admin

import (
	"context"

	"google.golang.org/grpc"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// ServiceName is the full name of the Admin service (proto/mandate/v1/admin.proto).
const ServiceName = "mandate.v1.Admin"

// Server is the mandate.v1.Admin service. The glue below is written by
// hand on top of the protoc-gen-go messages, so that regenerating the
// protos needs no gRPC plugin.
type Server interface {
	ApplyPolicies(context.Context, *mandatev1.ApplyPoliciesRequest) (*mandatev1.ApplyPoliciesResponse, error)
	DeletePolicy(context.Context, *mandatev1.DeletePolicyRequest) (*mandatev1.DeletePolicyResponse, error)
	ListPolicies(context.Context, *mandatev1.ListPoliciesRequest) (*mandatev1.ListPoliciesResponse, error)
	Revoke(context.Context, *mandatev1.RevokeRequest) (*mandatev1.RevokeResponse, error)
	ListRevocations(context.Context, *mandatev1.ListRevocationsRequest) (*mandatev1.ListRevocationsResponse, error)
	Status(context.Context, *mandatev1.StatusRequest) (*mandatev1.StatusResponse, error)
	WaitAcked(context.Context, *mandatev1.WaitAckedRequest) (*mandatev1.WaitAckedResponse, error)
	AuditLog(context.Context, *mandatev1.AuditLogRequest) (*mandatev1.AuditLogResponse, error)
}

func handler[Req any, Resp any](method string, call func(Server, context.Context, *Req) (*Resp, error)) grpc.MethodDesc {
	return grpc.MethodDesc{
		MethodName: method,
		Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
			in := new(Req)
			if err := dec(in); err != nil {
				return nil, err
			}
			if icpt == nil {
				return call(srv.(Server), ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: "/" + ServiceName + "/" + method}
			return icpt(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return call(srv.(Server), ctx, req.(*Req))
			})
		},
	}
}

// ServiceDesc describes the Admin service for grpc.Server.RegisterService.
var ServiceDesc = grpc.ServiceDesc{
	ServiceName: ServiceName,
	HandlerType: (*Server)(nil),
	Methods: []grpc.MethodDesc{
		handler("ApplyPolicies", Server.ApplyPolicies),
		handler("DeletePolicy", Server.DeletePolicy),
		handler("ListPolicies", Server.ListPolicies),
		handler("Revoke", Server.Revoke),
		handler("ListRevocations", Server.ListRevocations),
		handler("Status", Server.Status),
		handler("WaitAcked", Server.WaitAcked),
		handler("AuditLog", Server.AuditLog),
	},
	Metadata: "mandate/v1/admin.proto",
}

// RegisterServer adds srv to g.
func RegisterServer(g grpc.ServiceRegistrar, srv Server) { g.RegisterService(&ServiceDesc, srv) }

// Client calls the Admin service.
type Client struct{ cc grpc.ClientConnInterface }

// NewClient returns a client over cc.
func NewClient(cc grpc.ClientConnInterface) *Client { return &Client{cc: cc} }

func invoke[Resp any](ctx context.Context, c *Client, method string, in any, opts []grpc.CallOption) (*Resp, error) {
	out := new(Resp)
	if err := c.cc.Invoke(ctx, "/"+ServiceName+"/"+method, in, out, opts...); err != nil {
		return nil, err
	}
	return out, nil
}

func (c *Client) ApplyPolicies(ctx context.Context, in *mandatev1.ApplyPoliciesRequest, opts ...grpc.CallOption) (*mandatev1.ApplyPoliciesResponse, error) {
	return invoke[mandatev1.ApplyPoliciesResponse](ctx, c, "ApplyPolicies", in, opts)
}

func (c *Client) DeletePolicy(ctx context.Context, in *mandatev1.DeletePolicyRequest, opts ...grpc.CallOption) (*mandatev1.DeletePolicyResponse, error) {
	return invoke[mandatev1.DeletePolicyResponse](ctx, c, "DeletePolicy", in, opts)
}

func (c *Client) ListPolicies(ctx context.Context, in *mandatev1.ListPoliciesRequest, opts ...grpc.CallOption) (*mandatev1.ListPoliciesResponse, error) {
	return invoke[mandatev1.ListPoliciesResponse](ctx, c, "ListPolicies", in, opts)
}

func (c *Client) Revoke(ctx context.Context, in *mandatev1.RevokeRequest, opts ...grpc.CallOption) (*mandatev1.RevokeResponse, error) {
	return invoke[mandatev1.RevokeResponse](ctx, c, "Revoke", in, opts)
}

func (c *Client) ListRevocations(ctx context.Context, in *mandatev1.ListRevocationsRequest, opts ...grpc.CallOption) (*mandatev1.ListRevocationsResponse, error) {
	return invoke[mandatev1.ListRevocationsResponse](ctx, c, "ListRevocations", in, opts)
}

func (c *Client) Status(ctx context.Context, in *mandatev1.StatusRequest, opts ...grpc.CallOption) (*mandatev1.StatusResponse, error) {
	return invoke[mandatev1.StatusResponse](ctx, c, "Status", in, opts)
}

func (c *Client) WaitAcked(ctx context.Context, in *mandatev1.WaitAckedRequest, opts ...grpc.CallOption) (*mandatev1.WaitAckedResponse, error) {
	return invoke[mandatev1.WaitAckedResponse](ctx, c, "WaitAcked", in, opts)
}

func (c *Client) AuditLog(ctx context.Context, in *mandatev1.AuditLogRequest, opts ...grpc.CallOption) (*mandatev1.AuditLogResponse, error) {
	return invoke[mandatev1.AuditLogResponse](ctx, c, "AuditLog", in, opts)
}
