// Package stepup keeps the step-up approval requests replicas report (a
// step_up rule denied a request and handed out an approval-request id),
// and lets operators approve them (an Approval resource that lets matching
// requests through for a short window) or deny them. Every decision is in
// the audit trail with the operator's identity.
package stepup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// Plane is what the approvals need of cp/plane.
type Plane interface {
	PutApproval(ctx context.Context, a *mandatev1.Approval, actor string) (string, error)
	DeleteApproval(ctx context.Context, name, actor string) (string, error)
	Approvals() []*mandatev1.Approval
	Audit(ctx context.Context, actor, action, object, detail string) error
}

// States of a request.
const (
	StatePending  = "pending"
	StateApproved = "approved"
	StateDenied   = "denied"
)

// Defaults of Config.
const (
	DefaultWindow     = 5 * time.Minute
	DefaultMaxWindow  = time.Hour
	DefaultPendingTTL = time.Hour
	DefaultMaxPending = 10_000
)

// Config configures a Service.
type Config struct {
	Plane Plane
	// Operator authorizes an operator call and returns its identity (the
	// admin API's authorization). Required for the gRPC service.
	Operator func(ctx context.Context) (string, error)
	// Window is the default approval window (--approval-window); MaxWindow
	// caps what an operator may ask for.
	Window, MaxWindow time.Duration
	// PendingTTL is how long an unanswered request is kept after it was
	// last reported; decided ones are kept as long for the record.
	PendingTTL time.Duration
	// MaxPending bounds memory: past it, the least recently seen requests
	// are forgotten.
	MaxPending int
	// MaxPendingPerSubject bounds the pending requests of one subject
	// (default DefaultMaxPendingPerSubject): past it, that subject's new
	// requests are dropped. A full table drops new requests too: one
	// subject's flood never evicts another's request.
	MaxPendingPerSubject int
	// Store, when set, keeps pending requests durably (cp/store.DB): they
	// survive a restart (Load) and the per-subject quota holds there too.
	Store PendingStore
	// Uses counts approval uses fleet-wide (cp/store.DB); without it no
	// use can be claimed, so no approval allows anything.
	Uses   UseStore
	Now    func() time.Time
	Logger *slog.Logger
}

// PendingStore is what the service needs of the durable store.
type PendingStore interface {
	PutPending(ctx context.Context, p store.PendingApproval, quota int, audit ...store.AuditEntry) error
	PendingList(ctx context.Context) ([]store.PendingApproval, error)
	DeletePending(ctx context.Context, id string, audit ...store.AuditEntry) error
}

// DefaultMaxPendingPerSubject is the default per-subject quota.
const DefaultMaxPendingPerSubject = 100

// Request is one approval request.
type Request struct {
	ID, Subject, Task, Intent, Method, Path, GRPC, Policy, Rule string
	// MCP and MCPArguments: the MCP request and the argument values the
	// step_up rule read (raw JSON by name), which the id binds.
	MCP          string
	MCPArguments map[string]string
	// Headers are the header values the step_up rule read, which the id
	// binds too; Uses is how many requests an approval allows.
	Headers             map[string]string
	Uses                uint32
	FirstSeen, LastSeen time.Time
	Count               uint64
	State               string
	DecidedBy           string
	// Expires: when a pending request is forgotten, or when an approval
	// window ends.
	Expires time.Time
}

// Event is one step-up denial a replica reported.
type Event struct {
	ID, Subject, Task, Intent, Method, Path, GRPC, Policy, Rule string
	MCP                                                         string
	MCPArguments                                                map[string]string
	Headers                                                     map[string]string
	Time                                                        time.Time
}

// Service holds the requests. It is safe for concurrent use.
type Service struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	reqs      map[string]*Request
	bySubject map[string]int // pending requests per subject
	dropped   uint64
}

// New validates cfg.
func New(cfg Config) (*Service, error) {
	if cfg.Plane == nil {
		return nil, errors.New("stepup: Plane is required")
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.MaxWindow == 0 {
		cfg.MaxWindow = max(DefaultMaxWindow, cfg.Window)
	}
	if cfg.PendingTTL == 0 {
		cfg.PendingTTL = DefaultPendingTTL
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	switch {
	case cfg.Window < time.Second || cfg.Window > cfg.MaxWindow:
		return nil, fmt.Errorf("stepup: approval window %v outside [1s, %v]", cfg.Window, cfg.MaxWindow)
	case cfg.PendingTTL < time.Second:
		return nil, fmt.Errorf("stepup: pending TTL %v under one second", cfg.PendingTTL)
	case cfg.MaxPending < 1:
		return nil, fmt.Errorf("stepup: max pending %d", cfg.MaxPending)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	if cfg.MaxPendingPerSubject == 0 {
		cfg.MaxPendingPerSubject = DefaultMaxPendingPerSubject
	}
	if cfg.MaxPendingPerSubject < 1 {
		return nil, fmt.Errorf("stepup: max pending per subject %d", cfg.MaxPendingPerSubject)
	}
	return &Service{cfg: cfg, log: l, reqs: map[string]*Request{}, bySubject: map[string]int{}}, nil
}

// Load reads the pending requests the store holds (after a restart).
func (s *Service) Load(ctx context.Context) error {
	if s.cfg.Store == nil {
		return nil
	}
	ps, err := s.cfg.Store.PendingList(ctx)
	if err != nil {
		return fmt.Errorf("stepup: load pending requests: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range ps {
		var r Request
		if err := json.Unmarshal(p.Data, &r); err != nil || r.ID != p.ID || r.Subject != p.Subject {
			s.log.Warn("stored pending request unreadable; skipped", "id", p.ID)
			continue
		}
		r.State, r.Expires = StatePending, p.Expires
		if _, ok := s.reqs[r.ID]; !ok {
			s.reqs[r.ID] = &r
			s.bySubject[r.Subject]++
		}
	}
	return nil
}

// loadUnknown reads the store's pending requests when id is not known
// here: a replica may have reported it to another instance of the fleet.
func (s *Service) loadUnknown(ctx context.Context, id string) error {
	s.mu.Lock()
	_, known := s.reqs[id]
	s.mu.Unlock()
	if known {
		return nil
	}
	return s.Load(ctx)
}

// Dropped returns how many new requests the quotas dropped.
func (s *Service) Dropped() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dropped
}

// Observe records step-up events (already validated): new ids become
// pending requests, known ones are counted. Events for an id whose
// approval is active or that was denied are counted but do not reopen it.
func (s *Service) Observe(events []Event) {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	for _, ev := range events {
		r := s.reqs[ev.ID]
		if r == nil {
			if len(s.reqs) >= s.cfg.MaxPending || s.bySubject[ev.Subject] >= s.cfg.MaxPendingPerSubject {
				// Dropped, never evicting: a flood costs only its sender.
				s.dropped++
				continue
			}
			r = &Request{ID: ev.ID, Subject: ev.Subject, Task: ev.Task, Intent: ev.Intent, Method: ev.Method,
				Path: ev.Path, GRPC: ev.GRPC, Policy: ev.Policy, Rule: ev.Rule, MCP: ev.MCP, MCPArguments: ev.MCPArguments,
				Headers: ev.Headers, FirstSeen: ev.Time, LastSeen: ev.Time, State: StatePending, Expires: now.Add(s.cfg.PendingTTL)}
			if s.cfg.Store != nil {
				data, err := json.Marshal(r)
				if err == nil {
					err = s.cfg.Store.PutPending(context.Background(), store.PendingApproval{ID: r.ID, Subject: r.Subject,
						Data: data, UpdatedAt: now, Expires: r.Expires}, s.cfg.MaxPendingPerSubject)
				}
				if err != nil {
					s.dropped++
					s.log.Warn("step-up request not stored; dropped", "id", ev.ID, "subject", ev.Subject, "error", err)
					continue
				}
			}
			s.reqs[ev.ID] = r
			s.bySubject[r.Subject]++
			s.log.Info("step-up approval requested", "id", ev.ID, "subject", ev.Subject, "task", ev.Task,
				"policy", ev.Policy, "rule", ev.Rule, "method", ev.Method, "path", ev.Path, "grpc", ev.GRPC)
		}
		r.Count++
		if ev.Time.After(r.LastSeen) {
			r.LastSeen = ev.Time
		}
		if ev.Time.Before(r.FirstSeen) {
			r.FirstSeen = ev.Time
		}
		if r.State == StatePending {
			// Forget a pending request PendingTTL after it was last asked
			// for (by the cp's clock: replica clocks are not trusted).
			r.Expires = now.Add(s.cfg.PendingTTL)
		}
	}
}

// forgetLocked drops a request and its pending count and stored copy.
func (s *Service) forgetLocked(id string, r *Request) {
	delete(s.reqs, id)
	if r.State == StatePending {
		s.unpendLocked(r)
	}
}

// unpendLocked: r is no longer pending (decided or forgotten).
func (s *Service) unpendLocked(r *Request) {
	if s.bySubject[r.Subject]--; s.bySubject[r.Subject] <= 0 {
		delete(s.bySubject, r.Subject)
	}
	if s.cfg.Store != nil {
		if err := s.cfg.Store.DeletePending(context.Background(), r.ID); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("stored pending request not removed", "id", r.ID, "error", err)
		}
	}
}

func (s *Service) expireLocked(now time.Time) {
	for id, r := range s.reqs {
		// Decided requests stay listed for PendingTTL after they ended.
		end := r.Expires
		if r.State != StatePending {
			end = end.Add(s.cfg.PendingTTL)
		}
		if !now.Before(end) {
			s.forgetLocked(id, r)
		}
	}
}

// List returns the pending requests (all of them with all), newest first.
func (s *Service) List(all bool) []Request {
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked(now)
	out := make([]Request, 0, len(s.reqs))
	for _, r := range s.reqs {
		if all || r.State == StatePending {
			out = append(out, *r)
		}
	}
	slices.SortFunc(out, func(a, b Request) int {
		if c := b.LastSeen.Compare(a.LastSeen); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

// ErrNotFound is returned for an unknown (or forgotten) request id.
var ErrNotFound = errors.New("stepup: no such approval request")

// ErrDecided is returned when approving a request that was denied.
var ErrDecided = errors.New("stepup: approval request already denied")

// Defaults and bounds of an approval's uses.
const (
	DefaultUses = 1
	MaxUses     = 1000
)

// Approve grants request id for window (0: the default window) and uses
// requests (0: DefaultUses), pushing an Approval bound to its id (its
// subject, task, policy, rule, action and the values the rule read). It
// returns the request as approved and the Approval version.
func (s *Service) Approve(ctx context.Context, operator, id string, window time.Duration, uses uint32) (Request, string, error) {
	if window == 0 {
		window = s.cfg.Window
	}
	if uses == 0 {
		uses = DefaultUses
	}
	if uses > MaxUses {
		return Request{}, "", fmt.Errorf("stepup: %d uses over the limit of %d", uses, MaxUses)
	}
	if window < time.Second || window > s.cfg.MaxWindow {
		return Request{}, "", fmt.Errorf("stepup: window %v outside [1s, %v]", window, s.cfg.MaxWindow)
	}
	if err := s.loadUnknown(ctx, id); err != nil {
		return Request{}, "", err
	}
	now := s.cfg.Now()
	s.mu.Lock()
	s.expireLocked(now)
	r := s.reqs[id]
	if r == nil {
		s.mu.Unlock()
		return Request{}, "", fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	if r.State == StateDenied {
		s.mu.Unlock()
		return Request{}, "", fmt.Errorf("%w: %q by %s", ErrDecided, id, r.DecidedBy)
	}
	a := &mandatev1.Approval{
		Name: r.ID, Subject: r.Subject, Task: r.Task, Method: r.Method, Path: r.Path, Grpc: r.GRPC,
		Policy: r.Policy, Rule: r.Rule, Expires: timestamppb.New(now.Add(window)), ApprovedBy: operator, Uses: uses,
	}
	s.mu.Unlock()
	// The plane stores the Approval with its audit entry (actor = operator).
	v, err := s.cfg.Plane.PutApproval(ctx, a, operator)
	if err != nil {
		return Request{}, "", fmt.Errorf("stepup: push approval: %w", err)
	}
	s.mu.Lock()
	if cur := s.reqs[id]; cur != nil {
		r = cur
	} else {
		s.reqs[id] = r
	}
	if r.State == StateDenied {
		// Denied while the Approval was being pushed: that Deny saw no
		// approval to withdraw, so withdraw it here.
		by := r.DecidedBy
		s.mu.Unlock()
		if _, err := s.cfg.Plane.DeleteApproval(ctx, id, operator); err != nil {
			return Request{}, "", fmt.Errorf("stepup: withdraw approval denied meanwhile: %w", err)
		}
		return Request{}, "", fmt.Errorf("%w: %q by %s", ErrDecided, id, by)
	}
	defer s.mu.Unlock()
	if r.State == StatePending {
		s.unpendLocked(r)
	}
	r.State, r.DecidedBy, r.Expires, r.Uses = StateApproved, operator, a.GetExpires().AsTime(), uses
	s.log.Info("step-up approved", "id", id, "operator", operator, "subject", r.Subject, "task", r.Task,
		"until", r.Expires, "uses", uses, "version", v)
	return *r, v, nil
}

// UseStore counts approval uses fleet-wide (cp/store.DB).
type UseStore interface {
	ClaimApprovalUse(ctx context.Context, name string, max uint32, expires time.Time) (uint32, error)
}

// Claim counts one use of the Approval name, as the plane holds it, in
// Config.Uses: it returns the uses counted, this one included, and the
// maximum. ErrNotFound for an unknown approval, store.ErrExhausted and
// store.ErrExpired; an error without a use store (fail closed).
func (s *Service) Claim(ctx context.Context, name string) (used, limit uint32, err error) {
	if s.cfg.Uses == nil {
		return 0, 0, errors.New("stepup: no approval use store configured")
	}
	var a *mandatev1.Approval
	for _, x := range s.cfg.Plane.Approvals() {
		if x.GetName() == name {
			a = x
			break
		}
	}
	if a == nil {
		return 0, 0, fmt.Errorf("%w: approval %q", ErrNotFound, name)
	}
	limit = max(a.GetUses(), 1)
	used, err = s.cfg.Uses.ClaimApprovalUse(ctx, name, limit, a.GetExpires().AsTime())
	if err != nil {
		return 0, limit, fmt.Errorf("stepup: claim: %w", err)
	}
	return used, limit, nil
}

// Deny closes request id; an approval already granted for it is withdrawn.
// It returns the request and, when an Approval was deleted, its version.
func (s *Service) Deny(ctx context.Context, operator, id, reason string) (Request, string, error) {
	if len(reason) > 512 {
		return Request{}, "", errors.New("stepup: reason over 512 bytes")
	}
	if err := s.loadUnknown(ctx, id); err != nil {
		return Request{}, "", err
	}
	now := s.cfg.Now()
	s.mu.Lock()
	s.expireLocked(now)
	r := s.reqs[id]
	if r == nil {
		s.mu.Unlock()
		return Request{}, "", fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	wasApproved := r.State == StateApproved
	if r.State == StatePending {
		s.unpendLocked(r)
	}
	r.State, r.DecidedBy, r.Expires = StateDenied, operator, now
	out := *r
	s.mu.Unlock()

	version := ""
	if wasApproved {
		v, err := s.cfg.Plane.DeleteApproval(ctx, id, operator)
		if err != nil {
			return out, "", fmt.Errorf("stepup: withdraw approval: %w", err)
		}
		version = v
	}
	detail := fmt.Sprintf("subject=%s task=%s policy=%s rule=%s", out.Subject, out.Task, out.Policy, out.Rule)
	if wasApproved {
		detail += " approval withdrawn"
	}
	if reason != "" {
		detail += ": " + reason
	}
	if err := s.cfg.Plane.Audit(ctx, operator, "approval.deny", "approval/"+id, detail); err != nil {
		return out, version, fmt.Errorf("stepup: audit: %w", err)
	}
	s.log.Info("step-up denied", "id", id, "operator", operator, "withdrawn", wasApproved)
	return out, version, nil
}
