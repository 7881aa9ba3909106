// Package plane is the heart of mandate-cp: it owns the durable store and
// the xDS server. Every write is validated first (an invalid policy set
// never reaches the store or a replica), then stored together with its
// audit entry in one transaction, then published over xDS.
//
// Versions stay in step: each stored write is one effective change of the
// xDS resources, and ServerOptions starts a restarted control plane's xDS
// server so that publishing the stored content lands on the stored
// version again.
package plane

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/policies"
	xdsclient "github.com/mandate-dev/mandate/xds/client"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// Limits on what a single write may carry.
const (
	MaxPolicySource = 1 << 20
	MaxPolicies     = 1000
	maxValueLen     = 2048
	maxReasonLen    = 1024
	maxIntents      = 64
	commitHistory   = 1024
	// MaxRevokeBatch is the most records one RevokeMany stores.
	MaxRevokeBatch = 10000
)

var policyNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)

// InvalidError is a write refused by validation. Its message names the
// file, policy, rule and field at fault; it is safe to show the caller.
type InvalidError struct{ Err error }

func (e *InvalidError) Error() string { return e.Err.Error() }
func (e *InvalidError) Unwrap() error { return e.Err }

func invalid(format string, args ...any) error {
	return &InvalidError{Err: fmt.Errorf(format, args...)}
}

// ErrNotFound is returned when a named object does not exist.
var ErrNotFound = errors.New("plane: not found")

// NackError is returned by WaitAcked when a connected replica rejected the
// version waited for.
type NackError struct {
	Node, Version, Message string
}

func (e *NackError) Error() string {
	return fmt.Sprintf("plane: replica %s rejected version %s: %s", e.Node, e.Version, e.Message)
}

// Option configures a Plane.
type Option func(*Plane) error

// WithClock sets the time source (record timestamps, expiry checks, lag).
func WithClock(now func() time.Time) Option {
	return func(p *Plane) error {
		if now == nil {
			return errors.New("plane: nil clock")
		}
		p.now = now
		return nil
	}
}

// WithRegisterer exports the plane's metrics to reg.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(p *Plane) error {
		if reg == nil {
			return errors.New("plane: nil registerer")
		}
		p.reg = reg
		return nil
	}
}

// Store is what the plane needs of the durable store (cp/store.DB over
// bbolt or etcd, or its in-memory fake): resources by type URL, each
// write returning the type's version, and the audit trail.
type Store interface {
	Put(ctx context.Context, typeURL string, items []store.Item, audit ...store.AuditEntry) (uint64, error)
	Delete(ctx context.Context, typeURL string, names []string, audit ...store.AuditEntry) (uint64, error)
	Replace(ctx context.Context, typeURL string, items []store.Item, audit ...store.AuditEntry) (uint64, error)
	List(ctx context.Context, typeURL string) ([]store.Item, uint64, error)
	AppendAudit(ctx context.Context, entries ...store.AuditEntry) error
	AuditLog(ctx context.Context, since time.Time, limit int) ([]store.AuditEntry, error)
}

// Plane validates, stores and publishes. Create it with New.
type Plane struct {
	st  Store
	xds *xdsserver.Server
	log *slog.Logger
	now func() time.Time
	reg prometheus.Registerer

	mu          sync.Mutex // serializes writes: store order = publish order
	policies    map[string]*mandatev1.Policy
	revocations map[string]*mandatev1.Revocation
	approvals   map[string]*mandatev1.Approval
	keys        map[string]*mandatev1.VerificationKey

	cmu     sync.Mutex
	commits map[string]map[uint64]time.Time // type URL -> version -> commit time
	started time.Time

	writes *prometheus.CounterVec

	retention  time.Duration
	sweepEvery time.Duration
	lastSweep  time.Time // guarded by mu
	newTicker  func(time.Duration) (<-chan time.Time, func())
}

// ServerOptions returns the xdsserver options that make a server built
// over st count versions from where the store left them: publishing the
// stored content (New does) then yields exactly the stored versions.
func ServerOptions(ctx context.Context, st Store) ([]xdsserver.Option, error) {
	if st == nil {
		return nil, errors.New("plane: nil store")
	}
	var opts []xdsserver.Option
	for _, t := range mandatev1.TypeURLs() {
		items, v, err := st.List(ctx, t)
		if err != nil {
			return nil, fmt.Errorf("plane: load %s: %w", short(t), err)
		}
		if v > 0 && len(items) > 0 {
			v-- // the initial publish raises it by one
		}
		opts = append(opts, xdsserver.WithInitialVersion(t, v))
	}
	return opts, nil
}

// New loads everything the store holds and publishes it (restart
// recovery). Build xds with ServerOptions(st) so versions continue.
func New(ctx context.Context, st Store, xds *xdsserver.Server, logger *slog.Logger, opts ...Option) (*Plane, error) {
	if st == nil || xds == nil || logger == nil {
		return nil, errors.New("plane: store, xDS server and logger are required")
	}
	p := &Plane{st: st, xds: xds, log: logger, now: time.Now,
		commits:   map[string]map[uint64]time.Time{},
		retention: DefaultRevocationRetention, sweepEvery: DefaultSweepInterval, newTicker: realTicker}
	for _, o := range opts {
		if err := o(p); err != nil {
			return nil, err
		}
	}
	p.started = p.now()
	p.writes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "mandate", Subsystem: "cp", Name: "store_writes_total",
		Help: "Writes to the durable store, by resource type and result (ok, invalid, error).",
	}, []string{"type", "result"})
	if p.reg != nil {
		for _, c := range []prometheus.Collector{p.writes, lagCollector{p}} {
			if err := p.reg.Register(c); err != nil {
				return nil, fmt.Errorf("plane: register metrics: %w", err)
			}
		}
	}

	stored := map[string]uint64{}
	var err error
	if p.policies, stored[mandatev1.PolicyTypeURL], err = load(ctx, st, mandatev1.PolicyTypeURL, newPolicy); err != nil {
		return nil, err
	}
	if p.revocations, stored[mandatev1.RevocationTypeURL], err = load(ctx, st, mandatev1.RevocationTypeURL, newRevocation); err != nil {
		return nil, err
	}
	if p.approvals, stored[mandatev1.ApprovalTypeURL], err = load(ctx, st, mandatev1.ApprovalTypeURL, newApproval); err != nil {
		return nil, err
	}
	if p.keys, stored[mandatev1.VerificationKeyTypeURL], err = load(ctx, st, mandatev1.VerificationKeyTypeURL, newKey); err != nil {
		return nil, err
	}
	// A store written by an older or buggy control plane must not push a
	// set replicas reject: refuse to start instead.
	if _, err := CompilePolicies(slices.Collect(maps.Values(p.policies))); err != nil {
		return nil, fmt.Errorf("plane: stored policies do not compile: %w", err)
	}
	if _, err := xdsclient.RevocationSet(slices.Collect(maps.Values(p.revocations))); err != nil {
		return nil, fmt.Errorf("plane: stored revocations: %w", err)
	}
	for _, t := range mandatev1.TypeURLs() {
		v, err := p.publish(t, stored[t])
		if err != nil {
			return nil, err
		}
		if sv := stored[t]; v != strconv.FormatUint(sv, 10) {
			logger.Warn("xds version differs from the stored version (build the xDS server with plane.ServerOptions)",
				"type", short(t), "xds", v, "store", sv)
		}
	}
	logger.Info("control plane state loaded", "policies", len(p.policies), "revocations", len(p.revocations),
		"approvals", len(p.approvals), "keys", len(p.keys), "versions", xds.Versions())
	return p, nil
}

// publish pushes the in-memory copy of one type as version at (the
// store's version of the write); callers hold p.mu (or are in New).
func (p *Plane) publish(typeURL string, at uint64) (string, error) {
	var res map[string]proto.Message
	switch typeURL {
	case mandatev1.PolicyTypeURL:
		res = messages(p.policies)
	case mandatev1.RevocationTypeURL:
		res = messages(p.revocations)
	case mandatev1.ApprovalTypeURL:
		res = messages(p.approvals)
	case mandatev1.VerificationKeyTypeURL:
		res = messages(p.keys)
	default:
		return "", fmt.Errorf("plane: unknown type %q", typeURL)
	}
	v, err := p.xds.SetAt(typeURL, at, res)
	return p.published(typeURL, v, err)
}

func messages[M proto.Message](m map[string]M) map[string]proto.Message {
	out := make(map[string]proto.Message, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// publishRevocations pushes the revocations put and deleted since the
// last publish (p.revocations already holds the result) as version at:
// its cost is in the number of records changed, not the number held.
// Callers hold p.mu.
func (p *Plane) publishRevocations(put map[string]*mandatev1.Revocation, del []string, at uint64) (string, error) {
	v, err := p.xds.UpdateAt(mandatev1.RevocationTypeURL, at, messages(put), del)
	return p.published(mandatev1.RevocationTypeURL, v, err)
}

// published notes when version v of typeURL was committed.
func (p *Plane) published(typeURL, v string, err error) (string, error) {
	if err != nil {
		return v, fmt.Errorf("plane: publish %s: %w", short(typeURL), err)
	}
	if n, perr := strconv.ParseUint(v, 10, 64); perr == nil {
		p.cmu.Lock()
		m := p.commits[typeURL]
		if m == nil {
			m = map[uint64]time.Time{}
			p.commits[typeURL] = m
		}
		if _, ok := m[n]; !ok {
			m[n] = p.now()
		}
		for old := range m {
			if old+commitHistory < n {
				delete(m, old)
			}
		}
		p.cmu.Unlock()
	}
	return v, nil
}

func (p *Plane) countWrite(typeURL string, err error) {
	res := "ok"
	var inv *InvalidError
	switch {
	case errors.As(err, &inv):
		res = "invalid"
	case err != nil:
		res = "error"
	}
	p.writes.WithLabelValues(short(typeURL), res).Inc()
}

// Versions returns the current xDS version of every type.
func (p *Plane) Versions() map[string]string { return p.xds.Versions() }

// Audit appends an audit entry for an action that is not a resource write.
func (p *Plane) Audit(ctx context.Context, actor, action, object, detail string) error {
	if err := p.st.AppendAudit(ctx, p.audit(actor, action, object, detail)); err != nil {
		return fmt.Errorf("plane: audit: %w", err)
	}
	return nil
}

func (p *Plane) audit(actor, action, object, detail string) store.AuditEntry {
	return store.AuditEntry{Time: p.now(), Actor: actor, Action: action, Object: object, Detail: detail}
}

// ---- policies ----

// Change says what an apply does to one policy.
type Change struct {
	Name string
	// Kind is "added", "changed", "unchanged" or "deleted".
	Kind string
	// Diff is a line diff for "changed".
	Diff string
}

// ApplyResult is the outcome of ApplyPolicySet.
type ApplyResult struct {
	Changes []Change
	// Version is the Policy version replicas must ACK.
	Version string
	// Changed is false when the apply (or dry run) changes nothing.
	Changed bool
}

// CompilePolicies parses every Policy resource (in name order, each
// labelled by its source file) and compiles them together, exactly as a
// replica will. Errors are *InvalidError.
func CompilePolicies(ps []*mandatev1.Policy) (*policies.Set, error) {
	ps = slices.Clone(ps)
	slices.SortFunc(ps, func(a, b *mandatev1.Policy) int { return strings.Compare(a.GetName(), b.GetName()) })
	var all []*policies.Policy
	for _, p := range ps {
		file := p.GetSourceFile()
		if file == "" {
			file = p.GetName()
		}
		parsed, err := policies.Parse(file, p.GetSource())
		if err != nil {
			return nil, &InvalidError{Err: err}
		}
		if len(parsed) == 0 {
			return nil, invalid("%s: no Policy document", file)
		}
		all = append(all, parsed...)
	}
	set, err := policies.Compile(all)
	if err != nil {
		return nil, &InvalidError{Err: err}
	}
	return set, nil
}

func checkPolicyResource(p *mandatev1.Policy) error {
	if p == nil {
		return invalid("nil policy")
	}
	label := p.GetSourceFile()
	if label == "" {
		label = p.GetName()
	}
	switch {
	case !policyNameRe.MatchString(p.GetName()):
		return invalid("%s: policy resource name %q: want 1-253 letters, digits, '.', '_' or '-'", label, p.GetName())
	case len(p.GetSource()) == 0:
		return invalid("%s: empty source", label)
	case len(p.GetSource()) > MaxPolicySource:
		return invalid("%s: source of %d bytes exceeds %d", label, len(p.GetSource()), MaxPolicySource)
	case len(p.GetSourceFile()) > 1024:
		return invalid("%s: source file name too long", label[:64])
	}
	return nil
}

// ApplyPolicies upserts policy resources. The whole resulting set must
// compile or nothing changes. It returns the Policy version.
func (p *Plane) ApplyPolicies(ctx context.Context, ps []*mandatev1.Policy, actor string) (string, error) {
	res, err := p.ApplyPolicySet(ctx, ps, false, false, actor)
	return res.Version, err
}

// ApplyPolicySet upserts ps; with prune, stored policies not in ps are
// deleted; with dryRun nothing is stored and the result says what an
// apply would change.
func (p *Plane) ApplyPolicySet(ctx context.Context, ps []*mandatev1.Policy, prune, dryRun bool, actor string) (ApplyResult, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	res, next, err := p.planPolicies(ps, prune)
	if err != nil {
		if !dryRun {
			p.countWrite(mandatev1.PolicyTypeURL, err)
		}
		return ApplyResult{Version: p.xds.Versions()[mandatev1.PolicyTypeURL]}, err
	}
	res.Version = p.xds.Versions()[mandatev1.PolicyTypeURL]
	if dryRun || !res.Changed {
		return res, nil
	}
	var summary []string
	for _, c := range res.Changes {
		if c.Kind != "unchanged" {
			summary = append(summary, c.Kind+" "+c.Name)
		}
	}
	items, err := encodeAll(slices.Collect(maps.Values(next)))
	if err != nil {
		return ApplyResult{}, err
	}
	sv, err := p.st.Replace(ctx, mandatev1.PolicyTypeURL, items, p.audit(actor, "policy.apply", "policies", strings.Join(summary, ", ")))
	p.countWrite(mandatev1.PolicyTypeURL, err)
	if err != nil {
		return ApplyResult{}, fmt.Errorf("plane: store policies: %w", err)
	}
	p.policies = next
	res.Version, err = p.publish(mandatev1.PolicyTypeURL, sv)
	p.log.Info("policies applied", "actor", actor, "changes", strings.Join(summary, ", "), "version", res.Version)
	return res, err
}

// planPolicies validates ps against the current set and returns the
// changes and the resulting set. Callers hold p.mu.
func (p *Plane) planPolicies(ps []*mandatev1.Policy, prune bool) (ApplyResult, map[string]*mandatev1.Policy, error) {
	if len(ps) > MaxPolicies {
		return ApplyResult{}, nil, invalid("%d policy files exceed the limit of %d", len(ps), MaxPolicies)
	}
	next := map[string]*mandatev1.Policy{}
	if !prune {
		maps.Copy(next, p.policies)
	}
	seen := map[string]bool{}
	var res ApplyResult
	for _, in := range ps {
		if err := checkPolicyResource(in); err != nil {
			return ApplyResult{}, nil, err
		}
		if seen[in.GetName()] {
			return ApplyResult{}, nil, invalid("policy resource %q given twice", in.GetName())
		}
		seen[in.GetName()] = true
		np := &mandatev1.Policy{Name: in.GetName(), Source: slices.Clone(in.GetSource()),
			SourceFile: in.GetSourceFile(), Version: mandatev1.PolicyVersion(in.GetSource())}
		old, ok := p.policies[in.GetName()]
		switch {
		case !ok:
			res.Changes = append(res.Changes, Change{Name: np.Name, Kind: "added"})
		case proto.Equal(old, np):
			res.Changes = append(res.Changes, Change{Name: np.Name, Kind: "unchanged"})
		default:
			res.Changes = append(res.Changes, Change{Name: np.Name, Kind: "changed",
				Diff: LineDiff(string(old.GetSource()), string(np.GetSource()))})
		}
		next[np.Name] = np
	}
	if prune {
		for name := range p.policies {
			if !seen[name] {
				res.Changes = append(res.Changes, Change{Name: name, Kind: "deleted"})
			}
		}
	}
	slices.SortFunc(res.Changes, func(a, b Change) int { return strings.Compare(a.Name, b.Name) })
	for _, c := range res.Changes {
		if c.Kind != "unchanged" {
			res.Changed = true
		}
	}
	if _, err := CompilePolicies(slices.Collect(maps.Values(next))); err != nil {
		return ApplyResult{}, nil, err
	}
	return res, next, nil
}

// DeletePolicy removes one policy; the remaining set must still compile.
func (p *Plane) DeletePolicy(ctx context.Context, name, actor string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.policies[name]; !ok {
		return "", fmt.Errorf("policy %q: %w", name, ErrNotFound)
	}
	next := maps.Clone(p.policies)
	delete(next, name)
	if _, err := CompilePolicies(slices.Collect(maps.Values(next))); err != nil {
		p.countWrite(mandatev1.PolicyTypeURL, err)
		return "", err
	}
	sv, err := p.st.Delete(ctx, mandatev1.PolicyTypeURL, []string{name}, p.audit(actor, "policy.delete", "policy/"+name, ""))
	p.countWrite(mandatev1.PolicyTypeURL, err)
	if err != nil {
		return "", fmt.Errorf("plane: delete policy: %w", err)
	}
	p.policies = next
	v, err := p.publish(mandatev1.PolicyTypeURL, sv)
	p.log.Info("policy deleted", "actor", actor, "policy", name, "version", v)
	return v, err
}

// Policies returns the stored policies sorted by name, and the version.
func (p *Plane) Policies() ([]*mandatev1.Policy, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return sortedClones(p.policies), p.xds.Versions()[mandatev1.PolicyTypeURL]
}

// ---- revocations ----

// NewRecordID returns a fresh random revocation record id ("r-" and 16
// hex digits).
func NewRecordID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "r-" + hex.EncodeToString(b[:])
}

// Revoke validates r and stores it as a new record. ID defaults to a fresh
// random id, CreatedAt to now; CreatedBy is always actor. Records are
// never deleted: they expire. It returns the Revocation version.
func (p *Plane) Revoke(ctx context.Context, r revocation.Record, actor string) (string, error) {
	_, v, err := p.RevokeRecord(ctx, r, actor)
	return v, err
}

// RevokeRecord is Revoke returning the stored record too.
func (p *Plane) RevokeRecord(ctx context.Context, r revocation.Record, actor string) (*mandatev1.Revocation, string, error) {
	recs, v, err := p.RevokeMany(ctx, []revocation.Record{r}, actor)
	if err != nil {
		return nil, v, err
	}
	return recs[0], v, nil
}

// RevokeMany validates every record and stores them all as new records in
// one store transaction (one audit entry per record, so the trail says
// who revoked what), published as one new Revocation version. Either all
// are stored or none: one invalid record fails the batch with an
// *InvalidError naming its index. Defaults are Revoke's. It returns the
// stored records in input order and the Revocation version.
func (p *Plane) RevokeMany(ctx context.Context, rs []revocation.Record, actor string) ([]*mandatev1.Revocation, string, error) {
	if len(rs) == 0 || len(rs) > MaxRevokeBatch {
		err := invalid("a batch holds 1 to %d revocations, not %d", MaxRevokeBatch, len(rs))
		p.countWrite(mandatev1.RevocationTypeURL, err)
		return nil, "", err
	}
	now := p.now()
	recs := make([]*mandatev1.Revocation, len(rs))
	audit := make([]store.AuditEntry, len(rs))
	ids := make(map[string]struct{}, len(rs))
	for i, r := range rs {
		if r.ID == "" {
			r.ID = NewRecordID()
		}
		r.CreatedBy = actor
		if r.CreatedAt.IsZero() {
			r.CreatedAt = now
		}
		rec, err := p.checkRecord(r, now)
		if err == nil {
			if _, dup := ids[r.ID]; dup {
				err = invalid("revocation %s given twice", r.ID)
			}
		}
		if err != nil {
			if len(rs) > 1 {
				err = invalid("revocation %d of %d: %w", i+1, len(rs), err)
			}
			p.countWrite(mandatev1.RevocationTypeURL, err)
			return nil, "", err
		}
		ids[r.ID] = struct{}{}
		recs[i] = rec
		audit[i] = p.audit(actor, recordAction(r), "revocation/"+r.ID, recordDetail(r))
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, rec := range recs {
		if _, dup := p.revocations[rec.GetName()]; dup {
			err := invalid("revocation %s already exists (records are never replaced)", rec.GetName())
			p.countWrite(mandatev1.RevocationTypeURL, err)
			return nil, "", err
		}
	}
	items, err := encodeAll(recs)
	if err != nil {
		return nil, "", err
	}
	sv, err := p.st.Put(ctx, mandatev1.RevocationTypeURL, items, audit...)
	p.countWrite(mandatev1.RevocationTypeURL, err)
	if err != nil {
		return nil, "", fmt.Errorf("plane: store revocations: %w", err)
	}
	// p.revocations is only read under p.mu and the xDS server copies
	// what it is given, so the map is updated in place and only the batch
	// is published: a batch costs O(batch) here, not O(records stored).
	put := make(map[string]*mandatev1.Revocation, len(recs))
	for _, rec := range recs {
		p.revocations[rec.GetName()] = rec
		put[rec.GetName()] = rec
	}
	v, err := p.publishRevocations(put, nil, sv)
	if len(recs) == 1 {
		r := rs[0]
		p.log.Info("revocation recorded", "actor", actor, "id", recs[0].GetName(), "kind", r.Kind.String(), "value", r.Value,
			"intents", r.Intents, "expires", r.Expires, "version", v)
	} else {
		p.log.Info("revocations recorded", "actor", actor, "records", len(recs), "version", v)
	}
	out := make([]*mandatev1.Revocation, len(recs))
	for i, rec := range recs {
		out[i] = proto.Clone(rec).(*mandatev1.Revocation)
	}
	return out, v, err
}

func recordAction(r revocation.Record) string {
	if len(r.Intents) > 0 {
		return "downgrade.create"
	}
	return "revocation.create"
}

func recordDetail(r revocation.Record) string {
	detail := fmt.Sprintf("%s %s until %s", r.Kind, r.Value, r.Expires.UTC().Format(time.RFC3339))
	if len(r.Intents) > 0 {
		detail += " intents " + strings.Join(r.Intents, ",")
	}
	if r.Reason != "" {
		detail += ": " + r.Reason
	}
	return detail
}

func (p *Plane) checkRecord(r revocation.Record, now time.Time) (*mandatev1.Revocation, error) {
	if err := r.Validate(); err != nil {
		return nil, &InvalidError{Err: err}
	}
	switch {
	case len(r.Value) > maxValueLen:
		return nil, invalid("revocation value of %d bytes exceeds %d", len(r.Value), maxValueLen)
	case len(r.Reason) > maxReasonLen:
		return nil, invalid("reason of %d bytes exceeds %d", len(r.Reason), maxReasonLen)
	case len(r.Intents) > maxIntents:
		return nil, invalid("%d intents exceed %d", len(r.Intents), maxIntents)
	case !r.Expires.After(now):
		return nil, invalid("revocation %s: expiry %s is not in the future", r.ID, r.Expires.UTC().Format(time.RFC3339))
	case len(r.ID) > 128:
		return nil, invalid("revocation id too long")
	}
	rec := &mandatev1.Revocation{
		Name: r.ID, Kind: r.Kind.String(), Value: r.Value, Intents: slices.Clone(r.Intents),
		Expires: timestamppb.New(r.Expires), Reason: r.Reason,
		CreatedAt: timestamppb.New(r.CreatedAt), CreatedBy: r.CreatedBy,
	}
	// What the cp stores must be what a replica accepts.
	if _, err := xdsclient.RevocationRecord(rec); err != nil {
		return nil, &InvalidError{Err: err}
	}
	return rec, nil
}

// Revocations returns the records sorted by creation time; expired ones
// only when includeExpired.
func (p *Plane) Revocations(includeExpired bool) ([]*mandatev1.Revocation, string) {
	now := p.now()
	p.mu.Lock()
	all := sortedClones(p.revocations)
	v := p.xds.Versions()[mandatev1.RevocationTypeURL]
	p.mu.Unlock()
	out := all[:0]
	for _, r := range all {
		if includeExpired || r.GetExpires().AsTime().After(now) {
			out = append(out, r)
		}
	}
	slices.SortStableFunc(out, func(a, b *mandatev1.Revocation) int {
		return a.GetCreatedAt().AsTime().Compare(b.GetCreatedAt().AsTime())
	})
	return out, v
}

// ---- approvals and keys ----

// PutApproval validates and stores an approval.
func (p *Plane) PutApproval(ctx context.Context, a *mandatev1.Approval, actor string) (string, error) {
	if err := xdsclient.ValidateApproval(a); err != nil {
		err = &InvalidError{Err: err}
		p.countWrite(mandatev1.ApprovalTypeURL, err)
		return "", err
	}
	a = proto.Clone(a).(*mandatev1.Approval)
	p.mu.Lock()
	defer p.mu.Unlock()
	if old, ok := p.approvals[a.GetName()]; ok && proto.Equal(old, a) {
		return p.xds.Versions()[mandatev1.ApprovalTypeURL], nil
	}
	items, err := encodeAll([]*mandatev1.Approval{a})
	if err != nil {
		return "", err
	}
	sv, err := p.st.Put(ctx, mandatev1.ApprovalTypeURL, items, p.audit(actor, "approval.put", "approval/"+a.GetName(),
		fmt.Sprintf("subject %s until %s", a.GetSubject(), a.GetExpires().AsTime().UTC().Format(time.RFC3339))))
	p.countWrite(mandatev1.ApprovalTypeURL, err)
	if err != nil {
		return "", fmt.Errorf("plane: store approval: %w", err)
	}
	next := maps.Clone(p.approvals)
	next[a.GetName()] = a
	p.approvals = next
	return p.publish(mandatev1.ApprovalTypeURL, sv)
}

// DeleteApproval removes an approval.
func (p *Plane) DeleteApproval(ctx context.Context, name, actor string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.approvals[name]; !ok {
		return "", fmt.Errorf("approval %q: %w", name, ErrNotFound)
	}
	sv, err := p.st.Delete(ctx, mandatev1.ApprovalTypeURL, []string{name}, p.audit(actor, "approval.delete", "approval/"+name, ""))
	p.countWrite(mandatev1.ApprovalTypeURL, err)
	if err != nil {
		return "", fmt.Errorf("plane: delete approval: %w", err)
	}
	next := maps.Clone(p.approvals)
	delete(next, name)
	p.approvals = next
	return p.publish(mandatev1.ApprovalTypeURL, sv)
}

// Approvals returns the stored approvals sorted by name.
func (p *Plane) Approvals() []*mandatev1.Approval {
	p.mu.Lock()
	defer p.mu.Unlock()
	return sortedClones(p.approvals)
}

// SetVerificationKeys makes keys the whole set of verification keys.
func (p *Plane) SetVerificationKeys(ctx context.Context, keys []*mandatev1.VerificationKey, actor string) (string, error) {
	next := make(map[string]*mandatev1.VerificationKey, len(keys))
	for _, k := range keys {
		if err := xdsclient.ValidateKey(k); err != nil {
			err = &InvalidError{Err: err}
			p.countWrite(mandatev1.VerificationKeyTypeURL, err)
			return "", err
		}
		if _, dup := next[k.GetName()]; dup {
			err := invalid("verification key %q given twice", k.GetName())
			p.countWrite(mandatev1.VerificationKeyTypeURL, err)
			return "", err
		}
		next[k.GetName()] = proto.Clone(k).(*mandatev1.VerificationKey)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if maps.EqualFunc(next, p.keys, func(a, b *mandatev1.VerificationKey) bool { return proto.Equal(a, b) }) {
		return p.xds.Versions()[mandatev1.VerificationKeyTypeURL], nil
	}
	// The store has no whole-set replace for keys: add and change first,
	// then remove, publishing after each write so versions stay in step
	// and replicas never lose a key before its successor arrives.
	var v string
	for _, name := range slices.Sorted(maps.Keys(next)) {
		if old, ok := p.keys[name]; ok && proto.Equal(old, next[name]) {
			continue
		}
		items, err := encodeAll([]*mandatev1.VerificationKey{next[name]})
		if err != nil {
			return "", err
		}
		sv, err := p.st.Put(ctx, mandatev1.VerificationKeyTypeURL, items, p.audit(actor, "key.put", "verification_key/"+name, ""))
		p.countWrite(mandatev1.VerificationKeyTypeURL, err)
		if err != nil {
			return "", fmt.Errorf("plane: store key: %w", err)
		}
		cur := maps.Clone(p.keys)
		cur[name] = next[name]
		p.keys = cur
		if v, err = p.publish(mandatev1.VerificationKeyTypeURL, sv); err != nil {
			return v, err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(p.keys)) {
		if _, keep := next[name]; keep {
			continue
		}
		sv, err := p.st.Delete(ctx, mandatev1.VerificationKeyTypeURL, []string{name}, p.audit(actor, "key.delete", "verification_key/"+name, ""))
		p.countWrite(mandatev1.VerificationKeyTypeURL, err)
		if err != nil {
			return "", fmt.Errorf("plane: delete key: %w", err)
		}
		cur := maps.Clone(p.keys)
		delete(cur, name)
		p.keys = cur
		if v, err = p.publish(mandatev1.VerificationKeyTypeURL, sv); err != nil {
			return v, err
		}
	}
	return v, nil
}

// VerificationKeys returns the stored verification keys sorted by name.
func (p *Plane) VerificationKeys() []*mandatev1.VerificationKey {
	p.mu.Lock()
	defer p.mu.Unlock()
	return sortedClones(p.keys)
}

func sortedClones[M interface {
	proto.Message
	GetName() string
}](m map[string]M) []M {
	out := make([]M, 0, len(m))
	for _, name := range slices.Sorted(maps.Keys(m)) {
		out = append(out, proto.Clone(m[name]).(M))
	}
	return out
}

func short(typeURL string) string {
	if i := strings.LastIndexByte(typeURL, '.'); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

// AuditLog returns audit entries not older than since, oldest first.
func (p *Plane) AuditLog(ctx context.Context, since time.Time, limit int) ([]store.AuditEntry, error) {
	out, err := p.st.AuditLog(ctx, since, limit)
	if err != nil {
		return nil, fmt.Errorf("plane: %w", err)
	}
	return out, nil
}

func newPolicy() *mandatev1.Policy         { return &mandatev1.Policy{} }
func newRevocation() *mandatev1.Revocation { return &mandatev1.Revocation{} }
func newApproval() *mandatev1.Approval     { return &mandatev1.Approval{} }
func newKey() *mandatev1.VerificationKey   { return &mandatev1.VerificationKey{} }

// load decodes every stored resource of a type, keyed by name, and
// returns the type's version.
func load[M named](ctx context.Context, st Store, typeURL string, fresh func() M) (map[string]M, uint64, error) {
	items, v, err := st.List(ctx, typeURL)
	if err != nil {
		return nil, 0, fmt.Errorf("plane: load %s: %w", short(typeURL), err)
	}
	out := make(map[string]M, len(items))
	for _, it := range items {
		m := fresh()
		if err := proto.Unmarshal(it.Value, m); err != nil {
			return nil, 0, fmt.Errorf("plane: decode %s %q: %w", short(typeURL), it.Name, err)
		}
		if m.GetName() != it.Name {
			return nil, 0, fmt.Errorf("plane: stored %s %q holds name %q", short(typeURL), it.Name, m.GetName())
		}
		out[it.Name] = m
	}
	return out, v, nil
}

type named interface {
	proto.Message
	GetName() string
}

// encodeAll encodes resources as store items (deterministic protobuf).
func encodeAll[M named](ms []M) ([]store.Item, error) {
	out := make([]store.Item, len(ms))
	for i, m := range ms {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("plane: encode %q: %w", m.GetName(), err)
		}
		out[i] = store.Item{Name: m.GetName(), Value: b}
	}
	return out, nil
}
