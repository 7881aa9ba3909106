package issuer

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/cp/issuer/rpcutil"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// ServiceName is the gRPC name of the Mandates service.
const ServiceName = "mandate.v1.Mandates"

// Limits on request fields (network input).
const (
	maxTokenBytes = mandate.DefaultMaxTokenBytes
	maxScopeList  = 64
	maxScopeEntry = 512
)

// Register adds the Mandates service to gs.
func (s *Service) Register(gs grpc.ServiceRegistrar) {
	mandatev1.RegisterMandatesServer(gs, mandatesServer{s: s})
}

// mandatesServer is the mandatev1.MandatesServer of a Service (a type of
// its own: the RPC names Delegate and CompleteTask are Service's Go API).
type mandatesServer struct {
	mandatev1.UnimplementedMandatesServer
	s *Service
}

var _ mandatev1.MandatesServer = mandatesServer{}

func (m mandatesServer) IssueMandate(ctx context.Context, in *mandatev1.IssueMandateRequest) (*mandatev1.IssueMandateResponse, error) {
	s := m.s
	caller, err := s.cfg.Identify(ctx)
	if err != nil {
		return nil, rpcutil.Code(codes.Unauthenticated, err)
	}
	scope, err := scopeFromProto(in.GetScope())
	if err != nil {
		return nil, err
	}
	ttl, err := durationOf(in.GetTtl().AsDuration(), in.GetTtl() != nil)
	if err != nil {
		return nil, err
	}
	if err := checkLabel("task", in.GetTask()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := checkLabel("intent", in.GetIntent()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	out, err := s.Issue(ctx, caller, IssueRequest{Subject: in.GetSubject(), Task: in.GetTask(), Intent: in.GetIntent(), Scope: scope, TTL: ttl})
	if err != nil {
		s.log.Warn("mandate issuance refused", "caller", caller, "subject", rpcutil.Trim(in.GetSubject(), 256), "task", rpcutil.Trim(in.GetTask(), 128), "err", err)
		return nil, toStatus(err)
	}
	return &mandatev1.IssueMandateResponse{Token: out.Token, Id: out.Claims.ID, Expires: timestamppb.New(out.Claims.ExpiryTime()), KeyId: out.KeyID}, nil
}

func (m mandatesServer) Delegate(ctx context.Context, in *mandatev1.DelegateMandateRequest) (*mandatev1.DelegateMandateResponse, error) {
	s := m.s
	caller, err := s.cfg.Identify(ctx)
	if err != nil {
		return nil, rpcutil.Code(codes.Unauthenticated, err)
	}
	if err := rpcutil.CheckLen("parent_token", in.GetParentToken(), maxTokenBytes); err != nil {
		return nil, err
	}
	scope, err := scopeFromProto(in.GetScope())
	if err != nil {
		return nil, err
	}
	ttl, err := durationOf(in.GetTtl().AsDuration(), in.GetTtl() != nil)
	if err != nil {
		return nil, err
	}
	out, err := s.Delegate(ctx, caller, DelegateRequest{ParentToken: in.GetParentToken(), To: in.GetTo(), Scope: scope, TTL: ttl})
	if err != nil {
		s.log.Warn("mandate delegation refused", "caller", caller, "to", rpcutil.Trim(in.GetTo(), 256), "err", err)
		return nil, toStatus(err)
	}
	return &mandatev1.DelegateMandateResponse{Token: out.Token, Id: out.Claims.ID,
		Expires: timestamppb.New(out.Claims.ExpiryTime()), Depth: uint32(out.Claims.Depth)}, nil
}

func (m mandatesServer) CompleteTask(ctx context.Context, in *mandatev1.CompleteTaskRequest) (*mandatev1.CompleteTaskResponse, error) {
	s := m.s
	caller, operator := "", false
	if s.cfg.Operator != nil {
		if actor, err := s.cfg.Operator(ctx); err == nil {
			caller, operator = actor, true
		}
	}
	if !operator {
		c, err := s.cfg.Identify(ctx)
		if err != nil {
			return nil, rpcutil.Code(codes.Unauthenticated, err)
		}
		caller = c
	}
	out, err := s.CompleteTask(ctx, caller, operator, in.GetTask(), in.GetReason())
	if err != nil {
		return nil, toStatus(err)
	}
	return &mandatev1.CompleteTaskResponse{RevocationId: out.RevocationID, Version: out.Version, Expires: timestamppb.New(out.Expires)}, nil
}

func (m mandatesServer) VerificationKeys(_ context.Context, _ *mandatev1.MandateKeysRequest) (*mandatev1.MandateKeysResponse, error) {
	s := m.s
	// Public keys are public: any caller the transport admitted may read them.
	return &mandatev1.MandateKeysResponse{Keys: s.keys.VerificationKeys(), Issuer: s.cfg.Issuer, Audience: s.cfg.Audience}, nil
}

func toStatus(err error) error {
	var e *Error
	if !errors.As(err, &e) {
		return rpcutil.Code(codes.Internal, err)
	}
	switch e.Kind {
	case KindInvalid:
		return status.Error(codes.InvalidArgument, err.Error())
	case KindDenied:
		return status.Error(codes.PermissionDenied, err.Error())
	case KindRevoked:
		return status.Error(codes.FailedPrecondition, err.Error())
	default:
		return rpcutil.Code(codes.Unavailable, err)
	}
}

func durationOf(d time.Duration, set bool) (time.Duration, error) {
	if !set {
		return 0, nil
	}
	if d < 0 || d > 24*time.Hour {
		return 0, status.Errorf(codes.InvalidArgument, "ttl %v outside [0, 24h]", d)
	}
	return d, nil
}

// scopeFromProto bounds the lists (the mandate package validates the
// entries themselves).
func scopeFromProto(p *mandatev1.MandateScope) (mandate.Scope, error) {
	var s mandate.Scope
	var mcpScope mandate.MCPScope
	for _, f := range []struct {
		name string
		in   []string
		out  *[]string
	}{
		{"destinations", p.GetDestinations(), &s.Destinations},
		{"hosts", p.GetHosts(), &s.Hosts},
		{"methods", p.GetMethods(), &s.Methods},
		{"paths", p.GetPaths(), &s.Paths},
		{"grpc", p.GetGrpc(), &s.GRPC},
		{"mcp_methods", p.GetMcpMethods(), &mcpScope.Methods},
		{"mcp_tools", p.GetMcpTools(), &mcpScope.Tools},
		{"mcp_resources", p.GetMcpResources(), &mcpScope.Resources},
	} {
		if len(f.in) > maxScopeList {
			return s, status.Errorf(codes.InvalidArgument, "scope.%s: %d entries, limit %d", f.name, len(f.in), maxScopeList)
		}
		for _, e := range f.in {
			if err := rpcutil.CheckLen("scope."+f.name, e, maxScopeEntry); err != nil {
				return s, err
			}
		}
		if len(f.in) > 0 {
			*f.out = append([]string(nil), f.in...)
		}
	}
	if len(mcpScope.Methods)+len(mcpScope.Tools)+len(mcpScope.Resources) > 0 {
		s.MCP = &mcpScope
	}
	return s, nil
}

// ScopeToProto converts a mandate scope to its message.
func ScopeToProto(s mandate.Scope) *mandatev1.MandateScope {
	p := &mandatev1.MandateScope{Destinations: s.Destinations, Hosts: s.Hosts, Methods: s.Methods, Paths: s.Paths, Grpc: s.GRPC}
	if m := s.MCP; m != nil {
		p.McpMethods, p.McpTools, p.McpResources = m.Methods, m.Tools, m.Resources
	}
	return p
}
