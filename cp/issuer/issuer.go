// Package issuer is the Mandates service of mandate-cp: it mints mandates
// (IssueMandate) for callers the issuance policy admits, delegates them
// (Delegate) for their holders, ends tasks (CompleteTask) and keeps the
// signing keys (Keyring): generated here, stored in the store's
// signing-key bucket, rotated on a schedule with an overlap, and published
// to replicas as VerificationKey resources.
package issuer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"time"

	"crypto/rand"
	"encoding/hex"

	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/issuance"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	"github.com/mandate-dev/mandate/xds/resource"
)

// Plane is what the issuer needs of cp/plane.
type Plane interface {
	Revoke(ctx context.Context, r revocation.Record, actor string) (string, error)
	SetVerificationKeys(ctx context.Context, keys []*mandatev1.VerificationKey, actor string) (string, error)
	Revocations(includeExpired bool) ([]*mandatev1.Revocation, string)
	Audit(ctx context.Context, actor, action, object, detail string) error
}

// Store is what the issuer needs of the store (cp/store.DB): the signing
// keys, the audit trail (the task index is rebuilt from it) and the task
// owners.
type Store interface {
	KeyStore
	AuditLog(ctx context.Context, since time.Time, limit int) ([]store.AuditEntry, error)
	ClaimTask(ctx context.Context, claim store.TaskOwner, audit ...store.AuditEntry) (store.TaskOwner, error)
	TaskOwnerOf(ctx context.Context, task string) (store.TaskOwner, error)
}

// TaskOwnership is how long a task id stays its orchestrator's after the
// last mandate it issued for it: another orchestrator may claim the id
// only once it has lapsed.
const TaskOwnership = 7 * 24 * time.Hour

// Defaults of Config.
const (
	DefaultAudience = "mandate"
	DefaultMaxTTL   = 15 * time.Minute
	DefaultMaxDepth = 3
	DefaultRotation = 24 * time.Hour
	DefaultOverlap  = time.Hour
	DefaultSkew     = mandate.DefaultSkew
)

// Config configures a Service. Zero durations take the defaults.
type Config struct {
	Plane Plane
	// Store keeps the signing keys; required.
	Store Store
	// Policy is the issuance policy; nil admits no IssueMandate call.
	// SetPolicy replaces it.
	Policy *issuance.Policy
	// Issuer is "iss" of every mandate: mandate-cp's SPIFFE ID
	// (spiffe://<td>/mandate/cp); replicas must be configured with it.
	Issuer string
	// Audience is "aud" of every mandate (default "mandate").
	Audience string
	// MaxTTL caps every mandate's lifetime (--mandate-max-ttl).
	MaxTTL time.Duration
	// MaxDepth caps the delegation depth (--delegation-max-depth).
	MaxDepth int
	// Rotation and Overlap schedule the signing keys (--key-rotation,
	// --key-overlap). Overlap must be at least MaxTTL + Skew.
	Rotation, Overlap time.Duration
	// Skew is the clock tolerance of verification (default 30s).
	Skew time.Duration
	// Identify returns the caller's SPIFFE ID (rpcutil.Identify over
	// mTLS). Required.
	Identify func(ctx context.Context) (string, error)
	// Operator returns the operator's identity, or an error when the caller
	// is not an operator (the admin API's authorization). Operators may
	// complete any task. Optional.
	Operator func(ctx context.Context) (string, error)
	Now      func() time.Time
	Rand     io.Reader
	Logger   *slog.Logger
}

// Service implements mandate.v1.Mandates.
type Service struct {
	cfg    Config
	log    *slog.Logger
	keys   *Keyring
	policy sync.RWMutex
	pol    *issuance.Policy

	vmu      sync.Mutex
	verifier *mandate.Verifier
	vgen     uint64

	tasks *taskIndex
}

// New validates cfg and returns a Service. Call Start before serving.
func New(cfg Config) (*Service, error) {
	if cfg.Plane == nil {
		return nil, errors.New("issuer: Plane is required")
	}
	if cfg.Store == nil {
		return nil, errors.New("issuer: Store is required")
	}
	if cfg.Identify == nil {
		return nil, errors.New("issuer: Identify is required")
	}
	if cfg.Issuer == "" {
		return nil, errors.New("issuer: Issuer is required")
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = DefaultMaxTTL
	}
	if cfg.MaxDepth == 0 {
		cfg.MaxDepth = DefaultMaxDepth
	}
	if cfg.Rotation == 0 {
		cfg.Rotation = DefaultRotation
	}
	if cfg.Overlap == 0 {
		cfg.Overlap = DefaultOverlap
	}
	if cfg.Skew == 0 {
		cfg.Skew = DefaultSkew
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	switch {
	case cfg.MaxTTL < time.Second || cfg.MaxTTL > mandate.DefaultMaxTTL:
		return nil, fmt.Errorf("issuer: max TTL %v outside [1s, %v] (replicas refuse longer mandates)", cfg.MaxTTL, mandate.DefaultMaxTTL)
	case cfg.MaxDepth < 1 || cfg.MaxDepth > mandate.DefaultMaxDepth:
		return nil, fmt.Errorf("issuer: delegation max depth %d outside [1, %d] (replicas refuse deeper chains)", cfg.MaxDepth, mandate.DefaultMaxDepth)
	case cfg.Skew < 0 || cfg.Skew > mandate.MaxSkew:
		return nil, fmt.Errorf("issuer: skew %v outside [0, %v]", cfg.Skew, mandate.MaxSkew)
	case cfg.Overlap < cfg.MaxTTL+cfg.Skew:
		return nil, fmt.Errorf("issuer: key overlap %v must be at least the max mandate TTL plus skew (%v): a retired key must outlive every token it signed", cfg.Overlap, cfg.MaxTTL+cfg.Skew)
	}
	if _, err := checkSPIFFE("issuer", cfg.Issuer); err != nil {
		return nil, err
	}
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	kr, err := NewKeyring(KeyringConfig{
		Plane: cfg.Plane, Store: cfg.Store, Issuer: cfg.Issuer, Rotation: cfg.Rotation, Overlap: cfg.Overlap,
		Skew: cfg.Skew, Now: cfg.Now, Rand: cfg.Rand, Logger: l,
	})
	if err != nil {
		return nil, err
	}
	v, err := mandate.NewVerifier(mandate.VerifierConfig{
		Issuer: cfg.Issuer, Audience: cfg.Audience, Skew: cfg.Skew, MaxTTL: cfg.MaxTTL,
		MaxDepth: cfg.MaxDepth, Clock: clockFunc(cfg.Now), CacheSize: -1,
	})
	if err != nil {
		return nil, fmt.Errorf("issuer: %w", err)
	}
	return &Service{cfg: cfg, log: l, keys: kr, pol: cfg.Policy, verifier: v, tasks: newTaskIndex(maxTasks)}, nil
}

type clockFunc func() time.Time

func (f clockFunc) Now() time.Time { return f() }

// Keyring returns the service's signing keys.
func (s *Service) Keyring() *Keyring { return s.keys }

// SetPolicy replaces the issuance policy (nil: refuse every issuance).
func (s *Service) SetPolicy(p *issuance.Policy) {
	s.policy.Lock()
	s.pol = p
	s.policy.Unlock()
}

func (s *Service) currentPolicy() *issuance.Policy {
	s.policy.RLock()
	defer s.policy.RUnlock()
	return s.pol
}

// Start loads (or creates) the signing keys, publishes the verification
// keys and rebuilds the task index from the audit trail.
func (s *Service) Start(ctx context.Context) error {
	if err := s.keys.Load(ctx); err != nil {
		return err
	}
	since := s.cfg.Now().Add(-s.cfg.MaxTTL - s.cfg.Skew)
	entries, err := s.cfg.Store.AuditLog(ctx, since, 1<<20)
	if err != nil {
		return fmt.Errorf("issuer: read audit trail: %w", err)
	}
	for _, e := range entries {
		if e.Action == actionIssue || e.Action == actionDelegate {
			if d, ok := parseDetail(e.Detail); ok {
				s.tasks.add(d["task"], e.Actor, strings.TrimPrefix(e.Object, "mandate/"))
			}
		}
	}
	return nil
}

// Run rotates keys on schedule until ctx ends.
func (s *Service) Run(ctx context.Context) error {
	interval := min(s.cfg.Rotation/8, 30*time.Second)
	return s.keys.Run(ctx, interval)
}

// Audit actions.
const (
	actionIssue            = "mandate.issue"
	actionDelegate         = "mandate.delegate"
	actionComplete         = "task.complete"
	actionCompleteOperator = "task.complete.operator"
)

// Issued describes a minted mandate.
type Issued struct {
	Token  string
	Claims *mandate.Claims
	KeyID  string
}

// IssueRequest is the input of Issue.
type IssueRequest struct {
	Subject, Task, Intent string
	Scope                 mandate.Scope
	TTL                   time.Duration
}

// Error is a refusal with a reason code and the kind of failure.
type Error struct {
	Kind   ErrorKind
	Reason string
	Err    error
}

// ErrorKind classifies a refusal (mapped to gRPC codes).
type ErrorKind int

// Kinds of refusal.
const (
	KindInvalid     ErrorKind = iota + 1 // malformed request
	KindDenied                           // the caller may not do this
	KindRevoked                          // the subject, task or parent is revoked
	KindUnavailable                      // keys or store not usable
)

func (e *Error) Error() string { return "issuer: " + e.Reason + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func refuse(k ErrorKind, reason string, format string, args ...any) *Error {
	return &Error{Kind: k, Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Issue mints a root mandate for caller, if the issuance policy admits it.
func (s *Service) Issue(ctx context.Context, caller string, req IssueRequest) (*Issued, error) {
	if _, err := checkSPIFFE("subject", req.Subject); err != nil {
		return nil, &Error{Kind: KindInvalid, Reason: "bad_subject", Err: err}
	}
	if req.TTL < 0 {
		return nil, refuse(KindInvalid, "bad_ttl", "negative ttl %v", req.TTL)
	}
	g, err := s.currentPolicy().Authorize(issuance.Request{
		Caller: caller, Subject: req.Subject, Intent: req.Intent, Scope: req.Scope, TTL: req.TTL,
	})
	if err != nil {
		var ie *issuance.Error
		if errors.As(err, &ie) && ie.Reason == issuance.ReasonBadRequest {
			return nil, &Error{Kind: KindInvalid, Reason: ie.Reason, Err: err}
		}
		return nil, &Error{Kind: KindDenied, Reason: issuance.ReasonNoRule, Err: err}
	}
	ttl := min(g.TTL, s.cfg.MaxTTL)
	if err := s.checkRevoked(ctx, revocation.Query{Subject: req.Subject, Task: req.Task, Intent: req.Intent}); err != nil {
		return nil, err
	}
	if req.Task != "" {
		// The task belongs to the orchestrator that first issued into it;
		// no other may issue into it.
		now := s.cfg.Now()
		if _, err := s.cfg.Store.ClaimTask(ctx, store.TaskOwner{Task: req.Task, Owner: caller, CreatedAt: now,
			Expires: now.Add(TaskOwnership)}); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return nil, refuse(KindDenied, "task_owned_by_another", "task %q belongs to another orchestrator", req.Task)
			}
			return nil, &Error{Kind: KindUnavailable, Reason: "store_failed", Err: err}
		}
	}
	signer, err := s.signer(ctx)
	if err != nil {
		return nil, err
	}
	now := s.cfg.Now()
	c := &mandate.Claims{
		Subject: req.Subject, Audience: s.cfg.Audience,
		IssuedAt: now.Unix(), NotBefore: now.Unix(), Expiry: now.Add(ttl).Unix(),
		Task: req.Task, Intent: req.Intent, Scope: cloneScope(req.Scope),
	}
	if c.Expiry <= c.IssuedAt {
		c.Expiry = c.IssuedAt + 1
	}
	tok, err := signer.Sign(c)
	if err != nil {
		return nil, &Error{Kind: KindInvalid, Reason: string(mandate.ReasonOf(err)), Err: err}
	}
	detail := fmt.Sprintf("task=%s subject=%s intent=%s rule=%s expires=%s kid=%s",
		c.Task, c.Subject, c.Intent, g.Rule, c.ExpiryTime().UTC().Format(time.RFC3339), signer.KeyID())
	if err := s.cfg.Plane.Audit(ctx, caller, actionIssue, "mandate/"+c.ID, detail); err != nil {
		// A mandate that is not in the audit trail is not handed out.
		return nil, &Error{Kind: KindUnavailable, Reason: "audit_failed", Err: err}
	}
	s.tasks.add(c.Task, caller, c.ID)
	s.log.Info("mandate issued", "id", c.ID, "caller", caller, "subject", c.Subject, "task", c.Task,
		"intent", c.Intent, "rule", g.Rule, "expires", c.ExpiryTime())
	return &Issued{Token: tok, Claims: c, KeyID: signer.KeyID()}, nil
}

// DelegateRequest is the input of Delegate.
type DelegateRequest struct {
	ParentToken string
	To          string
	Scope       mandate.Scope
	TTL         time.Duration
}

// Delegate mints a child of the caller's mandate for another agent: a new
// trust decision. The caller must be the parent's holder; the parent must
// verify under the current keys and not be revoked (its subject, task or
// any id of its chain); the child's scope and lifetime stay within the
// parent's, and the depth within MaxDepth.
func (s *Service) Delegate(ctx context.Context, caller string, req DelegateRequest) (*Issued, error) {
	if _, err := checkSPIFFE("to", req.To); err != nil {
		return nil, &Error{Kind: KindInvalid, Reason: "bad_subject", Err: err}
	}
	if req.TTL < 0 {
		return nil, refuse(KindInvalid, "bad_ttl", "negative ttl %v", req.TTL)
	}
	parent, err := s.verify(req.ParentToken)
	if err != nil {
		return nil, &Error{Kind: KindDenied, Reason: string(mandate.ReasonOf(err)), Err: fmt.Errorf("parent mandate: %w", err)}
	}
	if err := parent.CheckHolder(caller); err != nil {
		return nil, &Error{Kind: KindDenied, Reason: string(mandate.ReasonWrongHolder), Err: errors.New("only the holder of the parent mandate may delegate it")}
	}
	if err := s.checkRevoked(ctx, revocation.Query{Subject: parent.Subject, Task: parent.Task, Intent: parent.Intent, Chain: parent.ChainIDs()}); err != nil {
		return nil, err
	}
	if err := s.checkRevoked(ctx, revocation.Query{Subject: req.To, Task: parent.Task, Intent: parent.Intent}); err != nil {
		return nil, err
	}
	ttl := req.TTL
	if ttl == 0 || ttl > s.cfg.MaxTTL {
		ttl = s.cfg.MaxTTL
	}
	now := s.cfg.Now()
	child, err := mandate.Delegate(parent, req.To, req.Scope, ttl, parent.Intent, s.cfg.MaxDepth, now)
	if err != nil {
		k := KindDenied
		if mandate.ReasonOf(err) == mandate.ReasonBadClaims {
			k = KindInvalid
		}
		return nil, &Error{Kind: k, Reason: string(mandate.ReasonOf(err)), Err: err}
	}
	signer, err := s.signer(ctx)
	if err != nil {
		return nil, err
	}
	tok, err := signer.Sign(child)
	if err != nil {
		return nil, &Error{Kind: KindInvalid, Reason: string(mandate.ReasonOf(err)), Err: err}
	}
	detail := fmt.Sprintf("task=%s subject=%s intent=%s parent=%s depth=%d chain=%s expires=%s kid=%s",
		child.Task, child.Subject, child.Intent, parent.ID, child.Depth, strings.Join(child.ChainIDs(), ","),
		child.ExpiryTime().UTC().Format(time.RFC3339), signer.KeyID())
	if err := s.cfg.Plane.Audit(ctx, caller, actionDelegate, "mandate/"+child.ID, detail); err != nil {
		return nil, &Error{Kind: KindUnavailable, Reason: "audit_failed", Err: err}
	}
	s.tasks.add(child.Task, caller, child.ID)
	s.log.Info("mandate delegated", "id", child.ID, "parent", parent.ID, "caller", caller, "to", child.Subject,
		"task", child.Task, "depth", child.Depth, "expires", child.ExpiryTime())
	return &Issued{Token: tok, Claims: child, KeyID: signer.KeyID()}, nil
}

// Completed describes the revocation that ended a task.
type Completed struct {
	RevocationID string
	Version      string
	Expires      time.Time
}

// CompleteTask revokes every mandate of task and of its delegations (they
// share the task id) on every replica: one KindTask record that lasts until
// every mandate issued so far has expired (now + MaxTTL + skew). operator
// is true when the caller was authorized as an operator (audited as
// such); otherwise the caller must be the task's owner, the orchestrator
// that first issued into it: delegating a mandate of a task never grants
// completing it. Completing a completed task again is a no-op that
// returns the record in force.
func (s *Service) CompleteTask(ctx context.Context, caller string, operator bool, task, reason string) (*Completed, error) {
	if err := checkLabel("task", task); err != nil {
		return nil, &Error{Kind: KindInvalid, Reason: "bad_task", Err: err}
	}
	if len(reason) > 512 {
		return nil, refuse(KindInvalid, "bad_reason", "reason of %d bytes, limit 512", len(reason))
	}
	if !operator {
		owner, err := s.cfg.Store.TaskOwnerOf(ctx, task)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return nil, refuse(KindDenied, "not_task_owner", "caller %q does not own task %q (operators may complete any task)", caller, task)
		case err != nil:
			return nil, &Error{Kind: KindUnavailable, Reason: "store_failed", Err: err}
		case owner.Owner != caller:
			return nil, refuse(KindDenied, "not_task_owner", "caller %q does not own task %q (operators may complete any task)", caller, task)
		}
	}
	now := s.cfg.Now()
	if c, ok := s.tasks.completed(task, now); ok {
		return c, nil
	}
	id, err := newRecordID(s.cfg.Rand)
	if err != nil {
		return nil, &Error{Kind: KindUnavailable, Reason: "random_failed", Err: err}
	}
	why := "task completed"
	if reason != "" {
		why += ": " + reason
	}
	rec := revocation.Record{
		ID: id, Kind: revocation.KindTask, Value: task, Expires: now.Add(s.cfg.MaxTTL + s.cfg.Skew),
		Reason: why, CreatedAt: now,
	}
	v, err := s.cfg.Plane.Revoke(ctx, rec, caller)
	if err != nil {
		return nil, &Error{Kind: KindUnavailable, Reason: "revoke_failed", Err: err}
	}
	n := s.tasks.complete(task, &Completed{RevocationID: id, Version: v, Expires: rec.Expires})
	action := actionComplete
	if operator {
		action = actionCompleteOperator
	}
	if err := s.cfg.Plane.Audit(ctx, caller, action, "task/"+task,
		fmt.Sprintf("revocation=%s mandates=%d version=%s: %s", id, n, v, why)); err != nil {
		s.log.Error("audit of task completion failed", "task", task, "err", err)
	}
	s.log.Info("task completed", "task", task, "caller", caller, "revocation", id, "version", v, "mandates", n)
	return &Completed{RevocationID: id, Version: v, Expires: rec.Expires}, nil
}

// Verify checks a token with the service's current keys (for callers that
// want the cp's view of a mandate).
func (s *Service) verify(token string) (*mandate.Claims, error) {
	keys, gen := s.keys.PublicKeys()
	s.vmu.Lock()
	defer s.vmu.Unlock()
	if gen != s.vgen {
		if err := s.verifier.SetKeys(keys); err != nil {
			return nil, err
		}
		s.vgen = gen
	}
	return s.verifier.Verify(token)
}

// signer returns the active signer, rotating first if the schedule says
// the active key is done.
func (s *Service) signer(ctx context.Context) (*mandate.Signer, error) {
	sg, until, err := s.keys.Signer()
	if err == nil && s.cfg.Now().Before(until) {
		return sg, nil
	}
	if _, err := s.keys.Tick(ctx); err != nil {
		return nil, &Error{Kind: KindUnavailable, Reason: "keys_unavailable", Err: err}
	}
	sg, _, err = s.keys.Signer()
	if err != nil {
		return nil, &Error{Kind: KindUnavailable, Reason: "keys_unavailable", Err: err}
	}
	return sg, nil
}

// checkRevoked refuses when a live revocation covers q.
func (s *Service) checkRevoked(ctx context.Context, q revocation.Query) error {
	rs, _ := s.cfg.Plane.Revocations(true)
	recs := make([]revocation.Record, 0, len(rs))
	for _, r := range rs {
		rec, err := resource.RevocationRecord(r)
		if err != nil {
			return &Error{Kind: KindUnavailable, Reason: "bad_revocation", Err: err}
		}
		recs = append(recs, rec)
	}
	set, err := revocation.NewSet(recs)
	if err != nil {
		return &Error{Kind: KindUnavailable, Reason: "bad_revocation", Err: err}
	}
	if v := set.Check(s.cfg.Now(), q); v.Revoked {
		return refuse(KindRevoked, "revoked", "revoked by record %s (%s)", v.Record, v.Kind)
	}
	return nil
}

func cloneScope(s mandate.Scope) mandate.Scope { return s.Clone() }

func newRecordID(r io.Reader) (string, error) {
	var b [8]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("issuer: record id: %w", err)
	}
	return "r-" + hex.EncodeToString(b[:]), nil
}

// parseDetail reads the "k=v k=v" form the audit details are written in.
func parseDetail(s string) (map[string]string, bool) {
	out := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, ok := strings.Cut(f, "=")
		if ok {
			out[k] = v
		}
	}
	return out, out["task"] != ""
}
