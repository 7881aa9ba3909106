// Package plane is the heart of mandate-cp: it owns the durable store and
// the xDS server. Every write goes down one path for every resource kind
// (commit): validated first with the checks a replica runs (package
// xds/resource; an invalid policy set never reaches the store or a
// replica), then stored together with its audit entries in one store
// transaction, then published over xDS at the version the store gave it.
//
// The store is the only owner of versions: a type's xDS version is the
// store's version of its last write (a global revision), also after a
// restart.
package plane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/cp/fleet"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	"github.com/mandate-dev/mandate/xds/resource"
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
	// MaxRevocations is the most revocation records held (expired ones
	// included until the sweeper removes them): a batch that would pass
	// it is refused. Any number of records reaches the replicas, in
	// chunks (xdsserver).
	MaxRevocations = 2_000_000
	// MaxPolicySetBytes bounds the whole policy set: it reaches a replica
	// in one response (a policy set is never split), so a set that could
	// not is refused when applied.
	MaxPolicySetBytes = mandatev1.MaxResponseBytes - 1<<20
)

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
// write returning the type's version, the feed of committed changes, and
// the audit trail.
type Store interface {
	Update(ctx context.Context, typeURL string, put []store.Item, del []string, audit ...store.AuditEntry) (uint64, error)
	Replace(ctx context.Context, typeURL string, base uint64, items []store.Item, audit ...store.AuditEntry) (uint64, error)
	List(ctx context.Context, typeURL string) ([]store.Item, uint64, error)
	Revision(ctx context.Context) (uint64, error)
	Follow(ctx context.Context, after uint64, fn func(rev uint64, changes []store.Change) error) error
	AppendAudit(ctx context.Context, entries ...store.AuditEntry) error
	AuditLog(ctx context.Context, since time.Time, limit int) ([]store.AuditEntry, error)
	AuditNewest(ctx context.Context, since time.Time, limit int) ([]store.AuditEntry, error)
	PruneAudit(ctx context.Context, r store.AuditRetention) (int, error)
}

// Plane validates, stores and publishes. Create it with New; Close stops
// it.
type Plane struct {
	st  Store
	xds *xdsserver.Server
	// fleet is every replica of every instance (WithFleet; default this
	// instance's xDS server alone).
	fleet fleet.View
	log   *slog.Logger
	now   func() time.Time
	reg   prometheus.Registerer

	// wmu serializes this instance's writes (plan, commit, wait until
	// served), so that each plans on the state the previous one left.
	wmu sync.Mutex
	// mu guards what the feed changes: the plane's copy of the store,
	// the revision served, and the sweeper's last run.
	mu       sync.Mutex
	res      map[string]map[string]resource.Named // type URL -> name -> resource, as committed
	typeRev  map[string]uint64                    // type URL -> revision of the last change served
	rev      uint64                               // every commit up to rev is served
	progress chan struct{}                        // closed and replaced when rev moves
	stop     context.CancelFunc
	stopped  chan struct{}

	cmu     sync.Mutex
	commits map[string]map[uint64]time.Time // type URL -> version -> commit time
	started time.Time

	writes *prometheus.CounterVec
	// phases times each write's steps (writePhase*).
	phases *prometheus.HistogramVec

	retention  time.Duration
	auditKeep  store.AuditRetention
	sweepEvery time.Duration
	lastSweep  time.Time // guarded by mu
	newTicker  func(time.Duration) (<-chan time.Time, func())
}

// New loads everything the store holds, checks it as a replica would,
// publishes it (restart recovery), and follows the store from there:
// every change committed to it, by this instance or (on etcd) any other,
// is applied to the plane's copy and published over xDS at its version.
// Build xds with ServerOptions(st).
func New(ctx context.Context, st Store, xds *xdsserver.Server, logger *slog.Logger, opts ...Option) (*Plane, error) {
	if st == nil || xds == nil || logger == nil {
		return nil, errors.New("plane: store, xDS server and logger are required")
	}
	p := &Plane{st: st, xds: xds, log: logger, now: time.Now, res: map[string]map[string]resource.Named{},
		typeRev: map[string]uint64{}, progress: make(chan struct{}), stopped: make(chan struct{}),
		commits:   map[string]map[uint64]time.Time{},
		retention: DefaultRevocationRetention, sweepEvery: DefaultSweepInterval, newTicker: realTicker}
	for _, o := range opts {
		if err := o(p); err != nil {
			return nil, err
		}
	}
	if p.fleet == nil {
		local, err := fleet.NewLocal("", xds)
		if err != nil {
			return nil, err
		}
		p.fleet = local
	}
	p.started = p.now()
	p.writes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "mandate", Subsystem: "cp", Name: "store_writes_total",
		Help: "Writes to the durable store, by resource type and result (ok, invalid, error).",
	}, []string{"type", "result"})
	p.phases = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "mandate", Subsystem: "cp", Name: "write_phase_seconds",
		Help: "Time of each step of a write, by resource type and phase: commit (the store transaction, synced), " +
			"publish (the committed change into the xDS cache), served (from the commit until it is published, the wait of the caller).",
		Buckets: prometheus.ExponentialBuckets(50e-6, 2, 16), // 50 µs to 1.6 s
	}, []string{"type", "phase"})
	if p.reg != nil {
		for _, c := range []prometheus.Collector{p.writes, p.phases, lagCollector{p}} {
			if err := p.reg.Register(c); err != nil {
				return nil, fmt.Errorf("plane: register metrics: %w", err)
			}
		}
	}
	rev, loaded, stored, err := p.load(ctx)
	if err != nil {
		return nil, err
	}
	p.res, p.rev = loaded, rev
	// A store written by an older or buggy control plane must not push a
	// set replicas reject: refuse to start instead.
	if err := p.checkStored(); err != nil {
		return nil, err
	}
	for _, k := range resource.Kinds() {
		v, err := p.xds.SetAt(k.TypeURL, stored[k.TypeURL], messages(p.res[k.TypeURL]))
		if _, err := p.published(k.TypeURL, v, err); err != nil {
			return nil, err
		}
		p.typeRev[k.TypeURL] = stored[k.TypeURL]
		if sv := stored[k.TypeURL]; v != strconv.FormatUint(sv, 10) {
			logger.Warn("xds version differs from the stored version (build the xDS server with plane.ServerOptions)",
				"type", k.Short, "xds", v, "store", sv)
		}
	}
	logger.Info("control plane state loaded", "policies", len(p.res[mandatev1.PolicyTypeURL]),
		"revocations", len(p.res[mandatev1.RevocationTypeURL]), "approvals", len(p.res[mandatev1.ApprovalTypeURL]),
		"keys", len(p.res[mandatev1.VerificationKeyTypeURL]), "versions", xds.Versions(), "revision", rev)
	fctx, stop := context.WithCancel(context.Background())
	p.stop = stop
	go p.follow(fctx)
	return p, nil
}

// Close stops following the store. The plane serves no write after it.
func (p *Plane) Close() {
	p.stop()
	<-p.stopped
}

// checkStored runs the replicas' checks over what the store holds.
func (p *Plane) checkStored() error {
	for _, k := range resource.Kinds() {
		if k.TypeURL == mandatev1.RevocationTypeURL {
			continue // indexed as a whole below
		}
		for _, r := range p.res[k.TypeURL] {
			if err := k.Check(r); err != nil {
				return fmt.Errorf("plane: stored %s: %w", k.Short, err)
			}
		}
	}
	if _, err := resource.CompilePolicies(typed[*mandatev1.Policy](p.res[mandatev1.PolicyTypeURL])); err != nil {
		return fmt.Errorf("plane: stored policies do not compile: %w", err)
	}
	if _, err := resource.RevocationSet(typed[*mandatev1.Revocation](p.res[mandatev1.RevocationTypeURL])); err != nil {
		return fmt.Errorf("plane: stored revocations: %w", err)
	}
	return nil
}

func messages(m map[string]resource.Named) map[string]proto.Message {
	out := make(map[string]proto.Message, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// typed returns the resources of one kind as their message type.
func typed[M resource.Named](m map[string]resource.Named) []M {
	out := make([]M, 0, len(m))
	for _, r := range m {
		out = append(out, r.(M))
	}
	return out
}

// sortedClones returns copies of the resources of one kind, by name.
func sortedClones[M resource.Named](m map[string]resource.Named) []M {
	out := make([]M, 0, len(m))
	for _, name := range slices.Sorted(maps.Keys(m)) {
		out = append(out, proto.Clone(m[name]).(M))
	}
	return out
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
		if len(m) > commitHistory {
			// Versions are sparse (global revisions): drop the oldest.
			oldest := slices.Min(slices.Collect(maps.Keys(m)))
			delete(m, oldest)
		}
		p.cmu.Unlock()
	}
	return v, nil
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

// AuditLog returns audit entries not older than since, oldest first: the
// oldest limit of them, or with newest the newest limit.
func (p *Plane) AuditLog(ctx context.Context, since time.Time, limit int, newest bool) ([]store.AuditEntry, error) {
	read := p.st.AuditLog
	if newest {
		read = p.st.AuditNewest
	}
	out, err := read(ctx, since, limit)
	if err != nil {
		return nil, fmt.Errorf("plane: %w", err)
	}
	return out, nil
}

func short(typeURL string) string { return resource.Short(typeURL) }
