package drift

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/cp/issuer/rpcutil"
	"github.com/mandate-dev/mandate/cp/stepup"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/policies/pattern"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// ReplicasServiceName is the gRPC name of the Replicas service.
const ReplicasServiceName = "mandate.v1.Replicas"

// MaxBatch is the most events one Report may carry.
const MaxBatch = 1000

// StepUps receives validated step-up events (cp/stepup.Service).
type StepUps interface {
	Observe(events []stepup.Event)
	// Claim counts one use of approval name fleet-wide and returns the
	// uses counted so far and the maximum (stepup.ErrNotFound,
	// store.ErrExhausted, store.ErrExpired).
	Claim(ctx context.Context, name string) (used, max uint32, err error)
}

// Sink takes validated out-of-intent events (*Detector, *Queue).
type Sink interface {
	Observe(ctx context.Context, events []OutOfIntent) ([]Action, error)
}

// ReplicasConfig configures the Replicas service.
type ReplicasConfig struct {
	// Identify returns the caller's identity (rpcutil.Identify). Required.
	Identify func(ctx context.Context) (string, error)
	// Replicas are the SPIFFE ID patterns of the replicas allowed to
	// report (--replica-id). Required.
	Replicas []string
	// AllowPlaintext accepts rpcutil.PlaintextActor (dev mode on loopback).
	AllowPlaintext bool
	// Drift counts the validated out-of-intent events: the Detector of a
	// single instance, or the Queue that carries them to the fleet
	// leader's Detector.
	Drift   Sink
	StepUps StepUps
	// EventsPerSecond and Burst bound the events each replica identity
	// may report (defaults DefaultReportRate, DefaultReportBurst): a
	// report past them is refused (ResourceExhausted) and counted, so one
	// compromised replica cannot flood drift or step-up state.
	EventsPerSecond float64
	Burst           int
	Now             func() time.Time
	Logger          *slog.Logger
}

// Defaults of the per-replica report rate.
const (
	DefaultReportRate  = 200
	DefaultReportBurst = 2 * MaxBatch
)

// Replicas implements mandatev1.ReplicasServer.
type Replicas struct {
	mandatev1.UnimplementedReplicasServer
	cfg      ReplicasConfig
	log      *slog.Logger
	allowed  []pattern.Pattern
	accepted atomic.Uint64
	rejected atomic.Uint64
	dropped  atomic.Uint64
	limited  atomic.Uint64

	mu      sync.Mutex
	buckets map[string]*bucket // per replica identity
}

// bucket is a token bucket of events.
type bucket struct {
	tokens float64
	at     time.Time
}

// take removes n tokens from the caller's bucket, refilled at the
// configured rate; false (and nothing taken) when there are not enough.
func (r *Replicas) take(replica string, n int) bool {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buckets[replica]
	if b == nil {
		if len(r.buckets) >= maxReplicaBuckets {
			clear(r.buckets) // identities are authenticated replicas: few
		}
		b = &bucket{tokens: float64(r.cfg.Burst), at: now}
		r.buckets[replica] = b
	}
	if el := now.Sub(b.at).Seconds(); el > 0 {
		b.tokens = min(float64(r.cfg.Burst), b.tokens+el*r.cfg.EventsPerSecond)
		b.at = now
	}
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}

const maxReplicaBuckets = 10_000

// NewReplicas validates cfg.
func NewReplicas(cfg ReplicasConfig) (*Replicas, error) {
	if cfg.Identify == nil {
		return nil, errors.New("drift: replicas: Identify is required")
	}
	if cfg.Drift == nil || cfg.StepUps == nil {
		return nil, errors.New("drift: replicas: Drift and StepUps are required")
	}
	if len(cfg.Replicas) == 0 {
		return nil, errors.New("drift: replicas: no replica SPIFFE ID patterns")
	}
	if cfg.EventsPerSecond == 0 {
		cfg.EventsPerSecond = DefaultReportRate
	}
	if cfg.Burst == 0 {
		cfg.Burst = DefaultReportBurst
	}
	if cfg.EventsPerSecond < 0 || cfg.Burst < MaxBatch {
		return nil, fmt.Errorf("drift: replicas: rate %v/s with burst %d (at least one full report, %d)", cfg.EventsPerSecond, cfg.Burst, MaxBatch)
	}
	r := &Replicas{cfg: cfg, log: cfg.Logger, buckets: map[string]*bucket{}}
	for _, s := range cfg.Replicas {
		if !strings.HasPrefix(s, "spiffe://") {
			return nil, fmt.Errorf("drift: replicas: %q is not a SPIFFE ID pattern", s)
		}
		p, err := pattern.Compile(s)
		if err != nil {
			return nil, fmt.Errorf("drift: replicas: %w", err)
		}
		r.allowed = append(r.allowed, p)
	}
	if r.cfg.Now == nil {
		r.cfg.Now = time.Now
	}
	if r.log == nil {
		r.log = slog.Default()
	}
	return r, nil
}

var _ mandatev1.ReplicasServer = (*Replicas)(nil)

// Register adds the Replicas service to gs.
func (r *Replicas) Register(gs grpc.ServiceRegistrar) {
	mandatev1.RegisterReplicasServer(gs, r)
}

// Stats returns the accepted, rejected and replica-dropped event counts.
func (r *Replicas) Stats() (accepted, rejected, dropped uint64) {
	return r.accepted.Load(), r.rejected.Load(), r.dropped.Load()
}

// Limited returns how many reported events the per-replica rate refused.
func (r *Replicas) Limited() uint64 { return r.limited.Load() }

func (r *Replicas) authorize(ctx context.Context) (string, error) {
	id, err := r.cfg.Identify(ctx)
	if err != nil {
		return "", rpcutil.Code(codes.Unauthenticated, err)
	}
	if id == rpcutil.PlaintextActor && r.cfg.AllowPlaintext {
		return id, nil
	}
	for _, p := range r.allowed {
		if p.Match(id) {
			return id, nil
		}
	}
	return "", status.Errorf(codes.PermissionDenied, "drift: %q may not report as a replica", id)
}

// ClaimApprovalUse counts one use of an approval before the calling
// replica allows a request on it. The caller must be a replica; a claim
// costs it one event of its report rate. Any error means: deny.
func (r *Replicas) ClaimApprovalUse(ctx context.Context, in *mandatev1.ClaimApprovalUseRequest) (*mandatev1.ClaimApprovalUseResponse, error) {
	replica, err := r.authorize(ctx)
	if err != nil {
		return nil, err
	}
	if n := in.GetName(); n == "" || len(n) > maxIDBytes || !allBytes(n, isPrintable) {
		return nil, status.Error(codes.InvalidArgument, "drift: approval name invalid")
	}
	if !r.take(replica, 1) {
		r.limited.Add(1)
		return nil, status.Errorf(codes.ResourceExhausted, "drift: %s over its rate", replica)
	}
	used, max, err := r.cfg.StepUps.Claim(ctx, in.GetName())
	switch {
	case errors.Is(err, store.ErrExhausted):
		return nil, status.Error(codes.ResourceExhausted, "drift: approval uses exhausted")
	case errors.Is(err, store.ErrExpired):
		return nil, status.Error(codes.FailedPrecondition, "drift: approval expired")
	case errors.Is(err, stepup.ErrNotFound):
		return nil, status.Error(codes.NotFound, "drift: no such approval")
	case err != nil:
		r.log.Warn("approval use claim failed", "approval", in.GetName(), "replica", replica, "error", err)
		return nil, status.Error(codes.Unavailable, "drift: approval use not claimed")
	}
	r.log.Info("approval use claimed", "approval", in.GetName(), "replica", replica, "used", used, "max", max)
	return &mandatev1.ClaimApprovalUseResponse{Used: used, Max: max}, nil
}

// Report takes a batch of replica events: the caller must be a replica
// (ReplicasConfig.Replicas); invalid events are counted and skipped.
func (r *Replicas) Report(ctx context.Context, in *mandatev1.ReplicaReportRequest) (*mandatev1.ReplicaReportResponse, error) {
	replica, err := r.authorize(ctx)
	if err != nil {
		return nil, err
	}
	if len(in.GetEvents()) > MaxBatch {
		return nil, status.Errorf(codes.InvalidArgument, "drift: %d events in one report, limit %d", len(in.GetEvents()), MaxBatch)
	}
	if !r.take(replica, len(in.GetEvents())) {
		r.limited.Add(uint64(len(in.GetEvents())))
		r.log.Warn("replica report over its rate refused", "replica", replica, "events", len(in.GetEvents()))
		return nil, status.Errorf(codes.ResourceExhausted, "drift: %s reports more than %v events/s", replica, r.cfg.EventsPerSecond)
	}
	var drift []OutOfIntent
	var steps []stepup.Event
	var rejected uint32
	for _, ev := range in.GetEvents() {
		switch e := ev.GetEvent().(type) {
		case *mandatev1.ReplicaEvent_OutOfIntent:
			o, err := ValidateOutOfIntent(e.OutOfIntent)
			if err != nil {
				rejected++
				r.log.Debug("replica event rejected", "replica", replica, "err", err)
				continue
			}
			drift = append(drift, o)
		case *mandatev1.ReplicaEvent_StepUp:
			s, err := ValidateStepUp(e.StepUp)
			if err != nil {
				rejected++
				r.log.Debug("replica event rejected", "replica", replica, "err", err)
				continue
			}
			steps = append(steps, s)
		default:
			rejected++
		}
	}
	if d := in.GetDropped(); d > 0 {
		r.dropped.Add(d)
		r.log.Warn("replica dropped events (queue full)", "replica", replica, "dropped", d)
	}
	r.accepted.Add(uint64(len(drift) + len(steps)))
	r.rejected.Add(uint64(rejected))
	if len(steps) > 0 {
		r.cfg.StepUps.Observe(steps)
	}
	if len(drift) > 0 {
		if _, err := r.cfg.Drift.Observe(ctx, drift); err != nil {
			// The events were counted; the action is retried on the next
			// denial. The replica need not resend.
			r.log.Error("drift action failed", "err", err)
		}
	}
	return &mandatev1.ReplicaReportResponse{Accepted: uint32(len(drift) + len(steps)), Rejected: rejected}, nil
}

// Field limits of reported events.
const (
	maxIDBytes     = 2048
	maxPathBytes   = 4096
	maxGRPCBytes   = 512
	maxReasonBytes = 64
)

// ValidateOutOfIntent checks a reported denial: every field is network
// input.
func ValidateOutOfIntent(e *mandatev1.OutOfIntentEvent) (OutOfIntent, error) {
	if e == nil {
		return OutOfIntent{}, errors.New("drift: empty out_of_intent event")
	}
	if err := checkSPIFFE("subject", e.GetSubject()); err != nil {
		return OutOfIntent{}, err
	}
	for _, f := range []struct{ name, v string }{{"task", e.GetTask()}, {"intent", e.GetIntent()}} {
		if f.v != "" {
			if err := checkLabel(f.name, f.v); err != nil {
				return OutOfIntent{}, err
			}
		}
	}
	if m := e.GetMandateId(); m != "" {
		if len(m) > 64 || !allBytes(m, isB64URL) {
			return OutOfIntent{}, errors.New("drift: mandate_id is not a base64url id of at most 64 bytes")
		}
	}
	if err := checkReason(e.GetReason()); err != nil {
		return OutOfIntent{}, err
	}
	t, err := checkTime(e.GetTime())
	if err != nil {
		return OutOfIntent{}, err
	}
	return OutOfIntent{Subject: e.GetSubject(), Task: e.GetTask(), Intent: e.GetIntent(), MandateID: e.GetMandateId(),
		Reason: e.GetReason(), Time: t}, nil
}

// ValidateStepUp checks a reported step-up request.
func ValidateStepUp(e *mandatev1.StepUpEvent) (stepup.Event, error) {
	if e == nil {
		return stepup.Event{}, errors.New("drift: empty step_up event")
	}
	id := e.GetId()
	if len(id) != 23 || !strings.HasPrefix(id, "ar-") || !allBytes(id[3:], isLowerHex) {
		return stepup.Event{}, errors.New("drift: step_up id is not an approval-request id (ar- and 20 hex digits)")
	}
	if err := checkSPIFFE("subject", e.GetSubject()); err != nil {
		return stepup.Event{}, err
	}
	for _, f := range []struct{ name, v string }{{"task", e.GetTask()}, {"intent", e.GetIntent()}} {
		if f.v != "" {
			if err := checkLabel(f.name, f.v); err != nil {
				return stepup.Event{}, err
			}
		}
	}
	if err := checkLabel("policy", e.GetPolicy()); err != nil {
		return stepup.Event{}, err
	}
	if err := checkLabel("rule", e.GetRule()); err != nil {
		return stepup.Event{}, err
	}
	switch {
	case e.GetGrpc() != "":
		if e.GetMethod() != "" && e.GetMethod() != "POST" {
			return stepup.Event{}, errors.New("drift: step_up gRPC event with a non-POST method")
		}
		g := e.GetGrpc()
		svc, m, ok := strings.Cut(g, "/")
		if !ok || svc == "" || m == "" || len(g) > maxGRPCBytes || !allBytes(g, isPrintable) {
			return stepup.Event{}, errors.New("drift: step_up grpc is not pkg.Service/Method")
		}
		if e.GetPath() != "" && (len(e.GetPath()) > maxPathBytes || !allBytes(e.GetPath(), isPrintable)) {
			return stepup.Event{}, errors.New("drift: step_up path invalid")
		}
	default:
		m := e.GetMethod()
		if m == "" || len(m) > 16 || !allBytes(m, isUpper) {
			return stepup.Event{}, errors.New("drift: step_up method is not an HTTP method")
		}
		p := e.GetPath()
		if p == "" || p[0] != '/' || len(p) > maxPathBytes || !allBytes(p, isPrintable) {
			return stepup.Event{}, errors.New("drift: step_up path is not an absolute path of printable ASCII")
		}
	}
	if err := checkMCPStepUp(e.GetMcp(), e.GetMcpArguments()); err != nil {
		return stepup.Event{}, err
	}
	if err := checkHeaders(e.GetHeaders()); err != nil {
		return stepup.Event{}, err
	}
	// The id is the replica's hash of what it reports (the header values
	// and MCP argument values the rule read included): recompute it, so a
	// report cannot pair one request's id with another's content (an
	// operator approves what the content says).
	svc, m, _ := strings.Cut(e.GetGrpc(), "/")
	if want := authz.ApprovalRequestID(authz.StepUpContent{Subject: e.GetSubject(), Task: e.GetTask(),
		Method: e.GetMethod(), Path: e.GetPath(), GRPCService: svc, GRPCMethod: m, Policy: e.GetPolicy(),
		Rule: e.GetRule(), MCP: e.GetMcp(), MCPArguments: e.GetMcpArguments(), Headers: e.GetHeaders()}); want != id {
		return stepup.Event{}, errors.New("drift: step_up id does not match the reported request")
	}
	t, err := checkTime(e.GetTime())
	if err != nil {
		return stepup.Event{}, err
	}
	return stepup.Event{ID: id, Subject: e.GetSubject(), Task: e.GetTask(), Intent: e.GetIntent(), Method: e.GetMethod(),
		Path: e.GetPath(), GRPC: e.GetGrpc(), Policy: e.GetPolicy(), Rule: e.GetRule(), Time: t,
		MCP: e.GetMcp(), MCPArguments: e.GetMcpArguments(), Headers: e.GetHeaders()}, nil
}

// Bounds of the header values a step-up event shows: the id binds them
// whole, so a longer one is refused (and cannot be approved), never cut.
const (
	maxStepUpHeaders     = 32
	maxStepUpHeaderBytes = 1024
)

func checkHeaders(h map[string]string) error {
	if len(h) > maxStepUpHeaders {
		return errors.New("drift: step_up headers: too many")
	}
	for k, v := range h {
		if k == "" || len(k) > maxMCPArgNameLen || len(v) > maxStepUpHeaderBytes || strings.ToLower(k) != k ||
			!allBytes(k, isPrintable) || !utf8.ValidString(v) {
			return errors.New("drift: step_up headers entry too long, not lowercase or not UTF-8")
		}
	}
	return nil
}

// Bounds of the MCP part of a step-up event: what a person reads before
// approving, so printable and small.
const (
	maxMCPBytes      = 4096 + 160
	maxMCPArguments  = 32
	maxMCPArgBytes   = 1100 // authz reports at most 1000 bytes and a digest
	maxMCPArgNameLen = 128
)

func checkMCPStepUp(mcp string, args map[string]string) error {
	if len(mcp) > maxMCPBytes || !allBytes(mcp, func(c byte) bool { return c >= 0x20 && c < 0x7f }) {
		return errors.New("drift: step_up mcp is not short printable ASCII")
	}
	if len(args) > 0 && mcp == "" || len(args) > maxMCPArguments {
		return errors.New("drift: step_up mcp_arguments without mcp, or too many")
	}
	for k, v := range args {
		if k == "" || len(k) > maxMCPArgNameLen || len(v) > maxMCPArgBytes || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return errors.New("drift: step_up mcp_arguments entry too long or not UTF-8")
		}
	}
	return nil
}

// checkSPIFFE checks a workload SPIFFE ID with Mandate's one checker.
func checkSPIFFE(field, s string) error {
	if _, err := identity.ParseID(s); err != nil {
		return fmt.Errorf("drift: %s: %w", field, err)
	}
	return nil
}

// checkLabel accepts what a mandate accepts for task and intent (and what
// policy and rule names use): 1..128 of [A-Za-z0-9._:/@-].
func checkLabel(field, s string) error {
	if s == "" || len(s) > 128 {
		return fmt.Errorf("drift: %s must be 1..128 bytes", field)
	}
	if !allBytes(s, func(c byte) bool {
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '/' || c == '@' || c == '-'
	}) {
		return fmt.Errorf("drift: %s has a byte outside [A-Za-z0-9._:/@-]", field)
	}
	return nil
}

func checkReason(s string) error {
	if s == "" || len(s) > maxReasonBytes || !allBytes(s, func(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' }) {
		return errors.New("drift: reason is not a reason code ([a-z0-9_], 1..64 bytes)")
	}
	return nil
}

func checkTime(ts interface {
	CheckValid() error
	AsTime() time.Time
}) (time.Time, error) {
	if ts == nil {
		return time.Time{}, errors.New("drift: event without a time")
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, fmt.Errorf("drift: event time: %w", err)
	}
	return ts.AsTime(), nil
}

func allBytes(s string, ok func(byte) bool) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !ok(s[i]) {
			return false
		}
	}
	return true
}

func isB64URL(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}
func isLowerHex(c byte) bool  { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }
func isUpper(c byte) bool     { return c >= 'A' && c <= 'Z' }
func isPrintable(c byte) bool { return c > 0x20 && c < 0x7f }
