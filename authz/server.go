// Package authz is Mandate's decision point: an Envoy ext_authz v3 Check
// server that decides every request on the caller's SPIFFE identity, its
// declared intent or mandate, the current revocations and the policies.
package authz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/authz/attrs"
	"github.com/mandate-dev/mandate/authz/decisioncache"
	"github.com/mandate-dev/mandate/authz/decisionlog"
	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/policies"
)

// StaleMode says what a replica past its staleness budget refuses.
type StaleMode int

const (
	// StaleDenyAll denies every request.
	StaleDenyAll StaleMode = iota
	// StaleDenySensitive denies requests to routes labelled
	// sensitivity=high and keeps deciding the others.
	StaleDenySensitive
)

// Staleness reports whether the replica has been cut off from the control
// plane for longer than its budget.
type Staleness interface {
	Stale() bool
}

// DecisionLogger receives one record per decision. Log must not block.
type DecisionLogger interface {
	Log(r decisionlog.Record)
}

// Config wires a Server.
type Config struct {
	// Identity resolves and validates the caller. Required.
	Identity *identity.Resolver
	// MaxHeaderBytes bounds the header bytes of one request (see
	// attrs.Config); zero takes attrs.DefaultMaxHeaderBytes.
	MaxHeaderBytes int
	// RequirePeerCertificate denies requests without source.certificate
	// (see attrs.Config).
	RequirePeerCertificate bool
	// Codec, when the gRPC server uses it (grpc.ForceServerCodecV2),
	// marks CheckRequests that did not decode or were too large; Check
	// denies them (bad_request).
	Codec *Codec
	// State is where policies, revocations and approvals are read. Required.
	State *StateStore
	// Cache keeps recent decisions; nil disables caching.
	Cache *decisioncache.Cache
	// Log receives decision records; nil disables the decision log.
	Log DecisionLogger
	// Metrics, when set, are updated on every decision.
	Metrics *Metrics
	// Mandates verifies x-mandate tokens. Without it, a request carrying
	// a mandate is denied (it cannot be checked).
	Mandates MandateVerifier
	// Staleness, when set, makes the server fail closed (per StaleMode)
	// while it reports stale.
	Staleness Staleness
	StaleMode StaleMode
	// OnOutOfIntent is called (from the request path: keep it cheap and
	// non-blocking) for each denial of a request outside its declared
	// intent or mandate scope. Drift detection counts these.
	OnOutOfIntent func(OutOfIntent)
	// OnStepUp is called for each step_up denial that no approval covers,
	// so the control plane can list the pending approval request.
	OnStepUp func(StepUpRequest)
	// ClaimApproval claims one use of approval name from the control
	// plane (fleet-wide counting) before a request is allowed on it; any
	// error denies. Only the step-up path pays this round trip. Nil: no
	// approval is ever honored (fail closed).
	ClaimApproval func(ctx context.Context, name string) error
	// ClaimTimeout bounds a claim (default DefaultClaimTimeout).
	ClaimTimeout time.Duration
	// MCPLimits bound the MCP request bodies read on routes labelled
	// protocol: mcp (zero values: package mcp's defaults).
	MCPLimits mcp.Limits
	// Now is the decision clock; defaults to the system clock (read as
	// time.Now would, see clock).
	Now func() time.Time
	// Logger receives operational events (recovered panics). Defaults to
	// slog.Default().
	Logger *slog.Logger
}

// OutOfIntent describes a denial outside a declared intent or scope.
type OutOfIntent struct {
	Subject   string
	Task      string
	Intent    string
	MandateID string
	Reason    string
	Time      time.Time
}

// StepUpRequest describes a request waiting for a person's approval.
type StepUpRequest struct {
	ID      string
	Subject string
	Task    string
	Intent  string
	Method  string
	Path    string
	GRPC    string
	Policy  string
	Rule    string
	Time    time.Time
	// MCP is the MCP request ("tools/call github.create_pull_request"),
	// and Arguments the argument values the step_up rule's condition read
	// (raw JSON, by name), which the approval is bound to.
	MCP       string
	Arguments map[string]string
	// Headers are the header values the step_up rule's condition read
	// (by lowercased name), which the approval is bound to too.
	Headers map[string]string
}

// Server implements envoy.service.auth.v3.Authorization.
type Server struct {
	authv3.UnimplementedAuthorizationServer

	cfg     Config
	attrs   *attrs.Extractor
	logger  *slog.Logger
	ids     *idGen
	keyPool sync.Pool
	allow   allowShared
	clock   *clock
}

// NewServer validates cfg and returns a Server.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Identity == nil {
		return nil, errors.New("authz: Identity is required")
	}
	if cfg.State == nil {
		return nil, errors.New("authz: State is required")
	}
	x, err := attrs.New(attrs.Config{Identity: cfg.Identity, MaxHeaderBytes: cfg.MaxHeaderBytes, MCPLimits: cfg.MCPLimits,
		RequirePeerCertificate: cfg.RequirePeerCertificate})
	if err != nil {
		return nil, fmt.Errorf("authz: %w", err)
	}
	ids, err := newIDGen()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, attrs: x, logger: cfg.Logger, ids: ids, allow: newAllowShared(), clock: newClock()}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	s.keyPool.New = func() any { return new(decisioncache.Key) }
	return s, nil
}

// Reason codes the server adds to those of the parsers and policies.
const (
	reasonNotReady      = "not_ready"
	reasonStale         = "stale_state"
	reasonInternalError = "internal_error"
	reasonBadRequest    = "bad_request"
	reasonRevoked       = "revoked"
	reasonDowngraded    = "downgraded"
	reasonApproved      = "approved"
	reasonNoVerifier    = "mandate_unverifiable"
)

// outcome is what decide concluded.
type outcome struct {
	effect    policies.Effect
	reason    string
	policy    string
	rule      string
	dryRun    string
	cacheHit  bool
	evaluated bool // policies were evaluated (a cache miss)
	// approvable: a step_up an approval may lift (an allow rule matched).
	approvable bool
	approval   string // step-up approval request id
	// entry is the cached decision of a cache hit.
	entry *decisioncache.Entry
	// argKeys, allArgs: the MCP arguments the deciding rule read;
	// hdrKeys, allHdrs: the headers it read.
	argKeys []string
	allArgs bool
	hdrKeys []string
	allHdrs bool
}

// Check decides one request. It never returns an error: every failure is
// a deny (RPC OK, status PERMISSION_DENIED), so Envoy's failure_mode_allow
// can never turn a refusal into a pass.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (resp *authv3.CheckResponse, err error) {
	start := s.clock.now()
	// The decision id is made here and becomes a string once the
	// response is known: an allow's holds it (one allocation for both).
	var id decisionID
	s.ids.next(&id)
	var rec decisionlog.Record
	defer func() {
		if p := recover(); p != nil {
			if rec.DecisionID == "" {
				rec.DecisionID = string(id[:])
			}
			if m := s.cfg.Metrics; m != nil {
				m.panics.Inc()
			}
			s.logger.Error("authz: panic in decision, denied", "decision_id", rec.DecisionID,
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			out := outcome{effect: policies.EffectDeny, reason: reasonInternalError}
			resp = denyResponse(rec.DecisionID, &out)
			err = nil
			s.finishAfterPanic(&rec, &out, start)
		}
	}()
	out := s.decide(ctx, req, &rec, start)
	memo := s.memoOf(&out, rec.Task)
	switch {
	case out.effect == policies.EffectAllow:
		var taskHdr *corev3.HeaderValueOption
		if memo != nil {
			taskHdr = memo.taskHdr
		}
		resp, rec.DecisionID = s.allowResponse(&id, rec.Task, taskHdr)
	case attrs.IsMCPRoute(req.GetAttributes().GetContextExtensions()):
		rec.DecisionID = string(id[:])
		resp = mcpDenyResponse(rec.DecisionID, rec.MCPRequestID, &out)
	default:
		rec.DecisionID = string(id[:])
		resp = denyResponse(rec.DecisionID, &out)
	}
	s.finish(&rec, &out, memo, start)
	return resp, nil
}

// hitMemo is what the hits of one cached decision share, built on its
// first hit: the metric handles of its labels and, for an allow, its
// x-mandate-task header. Immutable once stored on the entry.
type hitMemo struct {
	metrics                      *Metrics
	result, reason, policy, rule string
	task                         string
	decisions, ruleHits          prometheus.Counter        // nil without metrics; ruleHits nil without a rule
	taskHdr                      *corev3.HeaderValueOption // nil without a task or for a deny
}

// memoOf returns the memo of a cache hit's entry when it describes this
// outcome exactly (an approved step-up, for one, does not), else nil.
func (s *Server) memoOf(out *outcome, task string) *hitMemo {
	e := out.entry
	if e == nil {
		return nil
	}
	result := out.effect.String()
	if mm, _ := e.Memo().(*hitMemo); mm != nil {
		if mm.metrics == s.cfg.Metrics && mm.result == result && mm.reason == out.reason &&
			mm.policy == out.policy && mm.rule == out.rule && mm.task == task {
			return mm
		}
		return nil
	}
	if uint8(out.effect) != e.Effect || out.reason != e.Reason {
		return nil
	}
	mm := &hitMemo{metrics: s.cfg.Metrics, result: result, reason: out.reason, policy: out.policy, rule: out.rule,
		task: strings.Clone(task)}
	if m := s.cfg.Metrics; m != nil {
		c := m.countersOf(out.policy, out.rule, result, out.reason)
		mm.decisions, mm.ruleHits = c.decisions, c.ruleHits
	}
	if out.effect == policies.EffectAllow && task != "" {
		mm.taskHdr = overwrite(HeaderTask, mm.task)
	}
	e.SetMemo(mm) // a concurrent first hit may store its own, equal one
	return mm
}

func (s *Server) finish(rec *decisionlog.Record, out *outcome, memo *hitMemo, start time.Time) {
	lat := time.Since(start)
	result := out.effect.String()
	if m := s.cfg.Metrics; m != nil {
		m.latency.Observe(lat.Seconds())
		if memo != nil {
			memo.decisions.Inc()
			if memo.ruleHits != nil {
				memo.ruleHits.Inc()
			}
		} else {
			c := m.countersOf(out.policy, out.rule, result, out.reason)
			c.decisions.Inc()
			if c.ruleHits != nil {
				c.ruleHits.Inc()
			}
		}
		if out.cacheHit {
			m.cacheHits.Inc()
		} else if out.evaluated {
			m.cacheMisses.Inc()
		}
	}
	if s.cfg.Log == nil {
		return
	}
	rec.Result = result
	rec.Reason = out.reason
	rec.Policy = out.policy
	rec.Rule = out.rule
	rec.DryRun = out.dryRun
	rec.CacheHit = out.cacheHit
	rec.Latency = lat
	s.cfg.Log.Log(*rec)
}

// finishAfterPanic records a decision that panicked. The panic may have
// come from finish itself (a metric or decision logger), and a second one
// here would escape the deferred recover and crash the process.
func (s *Server) finishAfterPanic(rec *decisionlog.Record, out *outcome, start time.Time) {
	defer func() {
		if p := recover(); p != nil {
			s.logger.Error("authz: panic recording a denied decision", "decision_id", rec.DecisionID, "panic", fmt.Sprint(p))
		}
	}()
	s.finish(rec, out, nil, start)
}

// decide decides req; start is when Check began, which is also the
// decision's clock unless Config.Now sets another.
func (s *Server) decide(ctx context.Context, req *authv3.CheckRequest, rec *decisionlog.Record, start time.Time) outcome {
	now := start // the one clock of this decision
	if s.cfg.Now != nil {
		now = s.cfg.Now()
	}
	rec.Time = now
	st := s.cfg.State.Load()
	if st == nil || st.Policies == nil {
		return deny(reasonNotReady)
	}
	rec.PolicyVersion = st.PolicyVersion()
	if err := ctx.Err(); err != nil {
		return deny(reasonInternalError)
	}
	if s.cfg.Codec.undecodable(req) {
		return deny(reasonBadRequest)
	}
	if stale := s.cfg.Staleness; stale != nil && stale.Stale() {
		if s.cfg.StaleMode == StaleDenyAll || req.GetAttributes().GetContextExtensions()["sensitivity"] == "high" {
			return deny(reasonStale)
		}
	}

	var a attrs.Attributes
	err := s.attrs.Extract(req, now, &a)
	r := &a.Request
	rec.Subject, rec.Destination, rec.Method, rec.Host = r.Subject, r.Destination, r.Method, r.Host
	rec.Path, rec.Intent, rec.Task = r.Path, r.Intent, r.Task
	rec.RequestID, rec.TraceID = a.RequestID, a.TraceID
	if call := r.MCP; call != nil {
		rec.MCPRequestID, rec.MCPMethod, rec.MCPTool, rec.MCPResource = a.MCP.ID, call.Method, call.Tool, call.ResourceURI
		rec.MCPArguments = call.Arguments
	}
	if err != nil {
		if rec.Path == "" {
			rec.Path = a.RawPath
		}
		return deny(reasonOf(err))
	}

	var chainIDs, holders []string
	var notAfter time.Time
	if a.Token != "" {
		if s.cfg.Mandates == nil {
			return deny(reasonNoVerifier)
		}
		v, err := s.cfg.Mandates.VerifyRequest(a.Token, *r, now)
		if v != nil {
			// The record names the mandate's task and intent, also
			// when the request is refused (which task drifted).
			rec.MandateID = v.Mandate.ID
			rec.Chain = v.Mandate.Chain
			rec.Intent, rec.Task = v.Mandate.Intent, v.Mandate.Task
		}
		if err == nil {
			err = attrs.BindMandate(r, &v.Mandate)
			if err != nil {
				v.OutOfScope = true
			}
		}
		if err != nil {
			out := deny(reasonOf(err))
			if v != nil && v.OutOfScope {
				// Drift counts against the mandate's task, never one
				// the client declared.
				s.report(OutOfIntent{Subject: r.Subject, Task: v.Mandate.Task, Intent: v.Mandate.Intent,
					MandateID: v.Mandate.ID, Reason: out.reason, Time: now})
			}
			return out
		}
		rec.Intent, rec.Task = r.Intent, r.Task
		chainIDs, holders = v.ChainIDs, v.Mandate.Chain
		notAfter = v.Mandate.ExpiresAt
	}

	// Revocations are consulted on every request, cache hit or not.
	if verdict := st.Revocations.Check(now, revocation.Query{
		Subject: r.Subject, Task: r.Task, Intent: r.Intent, Chain: chainIDs, Holders: holders,
	}); verdict.Revoked {
		if verdict.Downgraded {
			out := deny(reasonDowngraded)
			s.outOfIntent(r, rec.MandateID, out.reason, now)
			return out
		}
		return deny(reasonRevoked)
	}

	out := s.evaluate(st, &a, notAfter, now)
	if out.effect == policies.EffectStepUp {
		d := policies.Decision{Policy: out.policy, Rule: out.rule}
		// An approval lifts the step-up only where an allow rule matches
		// too: it never allows more than the policy would without it.
		id, args, hdrs := stepUpID(r, out.policy, out.rule, reads{out.argKeys, out.allArgs, out.hdrKeys, out.allHdrs})
		a, ok := st.Approvals.Find(now, r, &d, id)
		if ok && out.approvable && s.claimUse(ctx, a.ID) {
			out.effect, out.reason = policies.EffectAllow, reasonApproved
		} else {
			out.approval = id
			if s.cfg.OnStepUp != nil {
				s.cfg.OnStepUp(StepUpRequest{
					ID: out.approval, Subject: r.Subject, Task: r.Task, Intent: r.Intent,
					Method: r.Method, Path: r.Path, GRPC: grpcName(r), Policy: out.policy, Rule: out.rule, Time: now,
					MCP: mcpName(r.MCP), Arguments: args, Headers: hdrs,
				})
			}
		}
	}
	// Denied with an intent or a mandate: drift. Denials by an explicit
	// deny rule are reported too; the control plane decides whether they
	// count (--drift-count-denied-by-rule).
	if out.effect == policies.EffectDeny && (out.reason == string(policies.ReasonNoMatch) || out.reason == string(policies.ReasonDeniedByRule)) &&
		(r.Intent != "" || r.Mandate != nil) {
		s.outOfIntent(r, rec.MandateID, out.reason, now)
	}
	return out
}

// DefaultClaimTimeout bounds an approval-use claim by default.
const DefaultClaimTimeout = 2 * time.Second

// claimUse claims one use of approval name; false on any failure
// (exhausted, expired, unknown, control plane unreachable, timeout).
func (s *Server) claimUse(ctx context.Context, name string) bool {
	if s.cfg.ClaimApproval == nil {
		return false
	}
	t := s.cfg.ClaimTimeout
	if t <= 0 {
		t = DefaultClaimTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	if err := s.cfg.ClaimApproval(ctx, name); err != nil {
		s.logger.Warn("approval use not claimed; denied", "approval", name, "error", err)
		return false
	}
	return true
}

// evaluate returns the policy decision for a's request, from the cache
// when it can.
func (s *Server) evaluate(st *State, a *attrs.Attributes, notAfter, now time.Time) outcome {
	r := &a.Request
	cache := s.cfg.Cache
	var key *decisioncache.Key
	if cache != nil {
		key = s.keyPool.Get().(*decisioncache.Key)
		defer s.putKey(key)
		a.WriteKey(key, st.PolicyEpoch, &st.keySel)
		if e, ok := cache.Get(key.Bytes(), st.PolicyEpoch, now); ok {
			return outcome{effect: policies.Effect(e.Effect), reason: e.Reason, policy: e.Policy,
				rule: e.Rule, dryRun: e.DryRun, cacheHit: true, approvable: e.AllowedIfApproved,
				argKeys: e.ArgumentKeys, allArgs: e.AllArguments, hdrKeys: e.HeaderKeys, allHdrs: e.AllHeaders, entry: e}
		}
	}
	// Conditions may keep the request they read (CEL activations), so
	// the policies get a copy: the caller's stays on its stack, and a
	// cache hit allocates no request.
	rc := new(policies.Request)
	*rc = *r
	d := st.Policies.Evaluate(rc)
	out := outcome{effect: d.Effect, reason: string(d.Reason), policy: d.Policy, rule: d.Rule,
		evaluated: true, approvable: d.AllowedIfApproved, argKeys: d.ArgumentKeys, allArgs: d.AllArguments,
		hdrKeys: d.HeaderKeys, allHdrs: d.AllHeaders}
	if d.DryRun != nil {
		out.dryRun = d.DryRun.Policy + "/" + d.DryRun.Rule + "=" + d.DryRun.Effect.String()
	}
	if cache != nil && d.Cacheable && d.Reason != policies.ReasonConditionError {
		cache.Set(key.Bytes(), &decisioncache.Entry{
			Effect: uint8(d.Effect), Policy: d.Policy, Rule: d.Rule, Reason: out.reason,
			DryRun: out.dryRun, Epoch: st.PolicyEpoch, AllowedIfApproved: d.AllowedIfApproved,
			ArgumentKeys: d.ArgumentKeys, AllArguments: d.AllArguments, HeaderKeys: d.HeaderKeys, AllHeaders: d.AllHeaders,
		}, notAfter, now)
	}
	return out
}

// putKey returns a key builder to the pool, unless a large request grew
// it: the pool keeps no request's worth of memory alive.
func (s *Server) putKey(k *decisioncache.Key) {
	if k.Len() <= 4*decisioncache.MaxRawKey {
		s.keyPool.Put(k)
	}
}

func (s *Server) outOfIntent(r *policies.Request, mandateID, reason string, now time.Time) {
	s.report(OutOfIntent{Subject: r.Subject, Task: r.Task, Intent: r.Intent,
		MandateID: mandateID, Reason: reason, Time: now})
}

func (s *Server) report(o OutOfIntent) {
	if m := s.cfg.Metrics; m != nil {
		m.driftDenies.WithLabelValues(o.Reason).Inc()
	}
	if s.cfg.OnOutOfIntent != nil {
		s.cfg.OnOutOfIntent(o)
	}
}

func deny(reason string) outcome {
	return outcome{effect: policies.EffectDeny, reason: reason}
}

// mcpName describes an MCP request for people: the method and its
// tool or resource.
func mcpName(c *policies.MCPCall) string {
	switch {
	case c == nil:
		return ""
	case c.Tool != "":
		return c.Method + " " + c.Tool
	case c.ResourceURI != "":
		return c.Method + " " + c.ResourceURI
	}
	return c.Method
}

func grpcName(r *policies.Request) string {
	if r.GRPCService == "" {
		return ""
	}
	return r.GRPCService + "/" + r.GRPCMethod
}
