// Package admin serves mandate.v1.Admin, the operator API of mandate-cp,
// over the plane: apply and diff policies, revoke and downgrade, status,
// wait for replicas, audit log. Callers are authorized by Auth (operators
// by SPIFFE ID over mTLS, local users over a unix socket).
package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/fleet"
	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// Plane is what the service needs of *plane.Plane.
type Plane interface {
	ApplyPolicySet(ctx context.Context, ps []*mandatev1.Policy, prune, dryRun bool, actor string) (plane.ApplyResult, error)
	DeletePolicy(ctx context.Context, name, actor string) (string, error)
	Policies() ([]*mandatev1.Policy, string)
	RevokeRecord(ctx context.Context, r revocation.Record, actor string) (*mandatev1.Revocation, string, error)
	RevokeMany(ctx context.Context, rs []revocation.Record, actor string) ([]*mandatev1.Revocation, string, error)
	Revocations(includeExpired bool) ([]*mandatev1.Revocation, string)
	Status() []fleet.Node
	EnvoyStatus() []xdsserver.ReplicaStatus
	Lag(rs xdsserver.ReplicaStatus, typeURL string) time.Duration
	Versions() map[string]string
	EnvoyVersions() map[string]string
	WaitAcked(ctx context.Context, typeURL, version string) (int, error)
	AuditLog(ctx context.Context, since time.Time, limit int, newest bool) ([]store.AuditEntry, error)
}

// Limits of the API.
const (
	DefaultWait  = 30 * time.Second
	MaxWait      = 10 * time.Minute
	MaxAuditRows = 10000
)

// Service implements mandatev1.AdminServer; register it with
// mandatev1.RegisterAdminServer.
type Service struct {
	mandatev1.UnimplementedAdminServer
	p   Plane
	log *slog.Logger
	now func() time.Time
}

// New returns the service.
func New(p Plane, logger *slog.Logger) (*Service, error) {
	if p == nil || logger == nil {
		return nil, errors.New("admin: plane and logger are required")
	}
	return &Service{p: p, log: logger, now: time.Now}, nil
}

var _ mandatev1.AdminServer = (*Service)(nil)

func actor(ctx context.Context) string {
	if p, ok := CallerFrom(ctx); ok {
		return p.Actor
	}
	if p, err := PeerOf(ctx); err == nil {
		return p.Actor
	}
	return "unknown"
}

// rpcError maps plane errors to gRPC statuses; anything unexpected is
// logged and answered without detail.
func (s *Service) rpcError(ctx context.Context, method string, err error) error {
	var inv *plane.InvalidError
	var nack *plane.NackError
	var down *store.UnavailableError
	switch {
	case errors.As(err, &down):
		// etcd out of reach or without quorum: nothing was written; the
		// caller may retry here later or on another instance.
		return status.Error(codes.Unavailable, down.Error())
	case errors.As(err, &inv):
		return status.Error(codes.InvalidArgument, inv.Error())
	case errors.Is(err, plane.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.As(err, &nack):
		return status.Error(codes.FailedPrecondition, nack.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	}
	s.log.Error("admin call failed", "method", method, "actor", actor(ctx), "error", err)
	return status.Error(codes.Internal, "internal error (see the control plane log)")
}

// ApplyPolicies implements Server.
func (s *Service) ApplyPolicies(ctx context.Context, in *mandatev1.ApplyPoliciesRequest) (*mandatev1.ApplyPoliciesResponse, error) {
	res, err := s.p.ApplyPolicySet(ctx, in.GetPolicies(), in.GetPrune(), in.GetDryRun(), actor(ctx))
	if err != nil {
		return nil, s.rpcError(ctx, "ApplyPolicies", err)
	}
	out := &mandatev1.ApplyPoliciesResponse{Version: res.Version}
	for _, c := range res.Changes {
		out.Changes = append(out.Changes, &mandatev1.PolicyChange{Name: c.Name, Change: c.Kind, Diff: c.Diff})
	}
	return out, nil
}

// DeletePolicy implements Server.
func (s *Service) DeletePolicy(ctx context.Context, in *mandatev1.DeletePolicyRequest) (*mandatev1.DeletePolicyResponse, error) {
	if in.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "policy name required")
	}
	v, err := s.p.DeletePolicy(ctx, in.GetName(), actor(ctx))
	if err != nil {
		return nil, s.rpcError(ctx, "DeletePolicy", err)
	}
	return &mandatev1.DeletePolicyResponse{Version: v}, nil
}

// ListPolicies implements Server.
func (s *Service) ListPolicies(context.Context, *mandatev1.ListPoliciesRequest) (*mandatev1.ListPoliciesResponse, error) {
	ps, v := s.p.Policies()
	return &mandatev1.ListPoliciesResponse{Policies: ps, Version: v}, nil
}

// Revoke implements Server.
func (s *Service) Revoke(ctx context.Context, in *mandatev1.RevokeRequest) (*mandatev1.RevokeResponse, error) {
	r, err := revokeRecord(in, s.now())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	rec, v, err := s.p.RevokeRecord(ctx, r, actor(ctx))
	if err != nil {
		return nil, s.rpcError(ctx, "Revoke", err)
	}
	return &mandatev1.RevokeResponse{Record: rec, Version: v}, nil
}

// RevokeBatch implements Server: every request is checked before any is
// stored; the plane stores them all in one transaction and one version.
func (s *Service) RevokeBatch(ctx context.Context, in *mandatev1.RevokeBatchRequest) (*mandatev1.RevokeBatchResponse, error) {
	reqs := in.GetRevocations()
	if len(reqs) == 0 || len(reqs) > plane.MaxRevokeBatch {
		return nil, status.Errorf(codes.InvalidArgument, "a batch holds 1 to %d revocations, not %d", plane.MaxRevokeBatch, len(reqs))
	}
	now := s.now()
	rs := make([]revocation.Record, len(reqs))
	for i, req := range reqs {
		r, err := revokeRecord(req, now)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "revocation %d of %d: %v", i+1, len(reqs), err)
		}
		rs[i] = r
	}
	recs, v, err := s.p.RevokeMany(ctx, rs, actor(ctx))
	if err != nil {
		return nil, s.rpcError(ctx, "RevokeBatch", err)
	}
	return &mandatev1.RevokeBatchResponse{Records: recs, Version: v}, nil
}

// revokeRecord checks the fields the plane cannot (kind, ttl) and builds
// the record.
func revokeRecord(in *mandatev1.RevokeRequest, now time.Time) (revocation.Record, error) {
	kind, err := revocation.ParseKind(in.GetKind())
	if err != nil {
		return revocation.Record{}, errors.New("kind must be subject, task or mandate")
	}
	if in.GetTtl() == nil {
		return revocation.Record{}, errors.New("ttl required: a revocation always expires")
	}
	if err := in.GetTtl().CheckValid(); err != nil || in.GetTtl().AsDuration() <= 0 {
		return revocation.Record{}, errors.New("ttl must be a positive duration")
	}
	return revocation.Record{
		Kind: kind, Value: in.GetValue(), Intents: in.GetIntents(), Reason: in.GetReason(),
		Expires: now.Add(in.GetTtl().AsDuration()), CreatedAt: now,
	}, nil
}

// ListRevocations implements Server.
func (s *Service) ListRevocations(_ context.Context, in *mandatev1.ListRevocationsRequest) (*mandatev1.ListRevocationsResponse, error) {
	size := int(in.GetPageSize())
	if size <= 0 || size > MaxRevocationPage {
		size = MaxRevocationPage
	}
	rs, v := s.p.Revocations(in.GetIncludeExpired())
	start := 0
	if tok := in.GetPageToken(); tok != "" {
		at, name, err := parsePageToken(tok)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, "admin: bad page_token")
		}
		// Records are in (creation time, name) order: the page starts
		// after the token's record, wherever records came or went.
		start = sort.Search(len(rs), func(i int) bool {
			c := rs[i].GetCreatedAt().AsTime().Compare(at)
			return c > 0 || c == 0 && rs[i].GetName() > name
		})
	}
	end := min(start+size, len(rs))
	out := &mandatev1.ListRevocationsResponse{Revocations: rs[start:end], Version: v}
	if end < len(rs) {
		last := rs[end-1]
		out.NextPageToken = strconv.FormatInt(last.GetCreatedAt().AsTime().UnixNano(), 10) + "/" + last.GetName()
	}
	return out, nil
}

// MaxRevocationPage is the most records one ListRevocations response
// carries.
const MaxRevocationPage = 10_000

func parsePageToken(tok string) (time.Time, string, error) {
	ns, name, ok := strings.Cut(tok, "/")
	if !ok || name == "" {
		return time.Time{}, "", errors.New("admin: page token")
	}
	n, err := strconv.ParseInt(ns, 10, 64)
	if err != nil {
		return time.Time{}, "", fmt.Errorf("admin: page token: %w", err)
	}
	return time.Unix(0, n), name, nil
}

// Status implements Server: replicas with their mandate.v1 types, and
// Envoys (LDS/CDS) with their Listener and Cluster types.
func (s *Service) Status(context.Context, *mandatev1.StatusRequest) (*mandatev1.StatusResponse, error) {
	out := &mandatev1.StatusResponse{Versions: s.p.Versions()}
	for _, n := range s.p.Status() {
		rs := s.nodeStatus(n.ReplicaStatus, mandatev1.TypeURLs())
		rs.Instance = n.Instance
		out.Replicas = append(out.Replicas, rs)
	}
	if ev := s.p.EnvoyVersions(); len(ev) > 0 {
		out.EnvoyVersions = ev
	}
	for _, rs := range s.p.EnvoyStatus() {
		out.Envoys = append(out.Envoys, s.nodeStatus(rs, xdsserver.EnvoyTypeURLs()))
	}
	return out, nil
}

// nodeStatus converts one node's state for the types it may fetch, in
// the order of typeURLs.
func (s *Service) nodeStatus(rs xdsserver.ReplicaStatus, typeURLs []string) *mandatev1.ReplicaStatus {
	r := &mandatev1.ReplicaStatus{NodeId: rs.NodeID, Connected: rs.Connected, Streams: int32(rs.Streams),
		ConnectedSince: ts(rs.ConnectedSince), LastSeen: ts(rs.LastSeen)}
	for _, t := range typeURLs {
		st, ok := rs.Types[t]
		if !ok {
			continue
		}
		r.Types = append(r.Types, &mandatev1.ReplicaTypeStatus{
			TypeUrl: t, SentVersion: st.SentVersion, AckedVersion: st.AckedVersion, AckedAt: ts(st.AckedAt),
			NackedVersion: st.NackedVersion, NackError: st.NackError, NackedAt: ts(st.NackedAt),
			Lag: durationpb.New(s.p.Lag(rs, t)),
		})
	}
	return r
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// WaitAcked implements Server.
func (s *Service) WaitAcked(ctx context.Context, in *mandatev1.WaitAckedRequest) (*mandatev1.WaitAckedResponse, error) {
	timeout := DefaultWait
	if d := in.GetTimeout(); d != nil {
		if d.CheckValid() != nil || d.AsDuration() <= 0 {
			return nil, status.Error(codes.InvalidArgument, "timeout must be a positive duration")
		}
		timeout = min(d.AsDuration(), MaxWait)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	n, err := s.p.WaitAcked(ctx, in.GetTypeUrl(), in.GetVersion())
	if err != nil {
		return nil, s.rpcError(ctx, "WaitAcked", err)
	}
	return &mandatev1.WaitAckedResponse{Replicas: int32(n), Elapsed: durationpb.New(time.Since(start))}, nil
}

// AuditLog implements Server.
func (s *Service) AuditLog(ctx context.Context, in *mandatev1.AuditLogRequest) (*mandatev1.AuditLogResponse, error) {
	limit := int(in.GetLimit())
	if limit <= 0 || limit > MaxAuditRows {
		limit = MaxAuditRows
	}
	var since time.Time
	if in.GetSince() != nil {
		if err := in.GetSince().CheckValid(); err != nil {
			return nil, status.Error(codes.InvalidArgument, "bad since timestamp")
		}
		since = in.GetSince().AsTime()
	}
	es, err := s.p.AuditLog(ctx, since, limit, in.GetNewest())
	if err != nil {
		return nil, s.rpcError(ctx, "AuditLog", err)
	}
	out := &mandatev1.AuditLogResponse{}
	for _, e := range es {
		out.Entries = append(out.Entries, &mandatev1.AuditEntry{Seq: e.Seq, Time: ts(e.Time), Actor: e.Actor,
			Action: e.Action, Object: e.Object, Detail: e.Detail})
	}
	return out, nil
}
