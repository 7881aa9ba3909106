package stepup

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/cp/issuer/rpcutil"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// ServiceName is the gRPC name of the Approvals service.
const ServiceName = "mandate.v1.Approvals"

// Register adds the Approvals service to gs. Every call must pass
// Config.Operator.
func (s *Service) Register(gs grpc.ServiceRegistrar) {
	mandatev1.RegisterApprovalsServer(gs, approvalsServer{s: s})
}

// approvalsServer is the mandatev1.ApprovalsServer of a Service (a type of
// its own: the RPC names List, Approve and Deny are Service's Go API).
type approvalsServer struct {
	mandatev1.UnimplementedApprovalsServer
	s *Service
}

var _ mandatev1.ApprovalsServer = approvalsServer{}

func (s *Service) operator(ctx context.Context) (string, error) {
	if s.cfg.Operator == nil {
		return "", status.Error(codes.PermissionDenied, "stepup: no operator authorization configured")
	}
	actor, err := s.cfg.Operator(ctx)
	if err != nil {
		return "", rpcutil.Code(codes.PermissionDenied, err)
	}
	return actor, nil
}

func (m approvalsServer) List(ctx context.Context, in *mandatev1.ListApprovalRequestsRequest) (*mandatev1.ListApprovalRequestsResponse, error) {
	s := m.s
	if _, err := s.operator(ctx); err != nil {
		return nil, err
	}
	// Requests reported to another instance of the fleet are in the
	// store only.
	if err := s.Load(ctx); err != nil {
		s.log.Warn("pending requests of the fleet not read", "error", err)
	}
	out := &mandatev1.ListApprovalRequestsResponse{}
	for _, r := range s.List(in.GetAll()) {
		out.Requests = append(out.Requests, ToProto(r))
	}
	return out, nil
}

func (m approvalsServer) Approve(ctx context.Context, in *mandatev1.ApproveStepUpRequest) (*mandatev1.ApproveStepUpResponse, error) {
	s := m.s
	actor, err := s.operator(ctx)
	if err != nil {
		return nil, err
	}
	if err := rpcutil.CheckLen("id", in.GetId(), maxIDLen); err != nil {
		return nil, err
	}
	var window = in.GetWindow().AsDuration()
	if in.GetWindow() == nil {
		window = 0
	} else if window <= 0 {
		return nil, status.Error(codes.InvalidArgument, "window must be positive")
	}
	r, v, err := s.Approve(ctx, actor, in.GetId(), window, in.GetUses())
	if err != nil {
		return nil, statusOf(err)
	}
	return &mandatev1.ApproveStepUpResponse{Request: ToProto(r), Version: v}, nil
}

func (m approvalsServer) Deny(ctx context.Context, in *mandatev1.DenyStepUpRequest) (*mandatev1.DenyStepUpResponse, error) {
	s := m.s
	actor, err := s.operator(ctx)
	if err != nil {
		return nil, err
	}
	if err := rpcutil.CheckLen("id", in.GetId(), maxIDLen); err != nil {
		return nil, err
	}
	r, v, err := s.Deny(ctx, actor, in.GetId(), in.GetReason())
	if err != nil {
		return nil, statusOf(err)
	}
	return &mandatev1.DenyStepUpResponse{Request: ToProto(r), Version: v}, nil
}

const maxIDLen = 64

func statusOf(err error) error {
	switch {
	case errors.Is(err, ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrDecided):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	return rpcutil.Code(codes.InvalidArgument, err)
}

// ToProto converts a request to its message.
func ToProto(r Request) *mandatev1.ApprovalRequest {
	return &mandatev1.ApprovalRequest{
		Id: r.ID, Subject: r.Subject, Task: r.Task, Intent: r.Intent, Method: r.Method, Path: r.Path,
		Grpc: r.GRPC, Policy: r.Policy, Rule: r.Rule, FirstSeen: timestamppb.New(r.FirstSeen),
		LastSeen: timestamppb.New(r.LastSeen), Count: r.Count, State: r.State, DecidedBy: r.DecidedBy,
		Expires: timestamppb.New(r.Expires), Mcp: r.MCP, McpArguments: r.MCPArguments,
		Headers: r.Headers, Uses: r.Uses,
	}
}
