// Package xdsserver serves Mandate's resources (mandate.v1 Policy,
// Revocation, Approval, VerificationKey) to mandate-authz replicas, and
// Envoy Listener and Cluster resources (LDS/CDS) to Envoy proxies, over
// delta and state-of-the-world ADS, built on go-control-plane, and tracks
// which node has ACKed or NACKed which version of each type.
//
// Every node is of one kind, replica or Envoy (NodeKind): a replica may
// fetch only mandate.v1 types, an Envoy only Listener and Cluster. The kind
// comes from the peer's identity when WithPeerKind is given (mandate-cp
// maps SPIFFE IDs to kinds), else from the first type the stream asks for;
// a request for a type of the other kind ends the stream with
// PermissionDenied. Status and WaitAcked on a mandate.v1 type look at
// replicas only; EnvoyStatus and WaitAcked on an Envoy type at Envoys only.
// Versions of the Envoy types are not persisted (WithInitialVersion works
// for them too).
//
// Versions are per type, monotonically increasing integers formatted as
// decimal strings. Each effective Set* call raises the type's version by
// one; a Set* that changes nothing keeps the version. The version a replica
// sees in a response (system_version_info in delta, version_info in SotW) is
// the same number Set* returned.
package xdsserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// Type URLs of the Envoy resources the server serves.
const (
	ListenerTypeURL = resourcev3.ListenerType
	ClusterTypeURL  = resourcev3.ClusterType
)

// EnvoyTypeURLs returns the Envoy resource types served (LDS, CDS).
func EnvoyTypeURLs() []string { return []string{ListenerTypeURL, ClusterTypeURL} }

// NodeKind says which resources a node may fetch.
type NodeKind string

const (
	// NodeUnknown: not classified by identity; the first type the stream
	// asks for decides.
	NodeUnknown NodeKind = ""
	// NodeReplica: a mandate-authz replica, mandate.v1 types only.
	NodeReplica NodeKind = "replica"
	// NodeEnvoy: an Envoy proxy, Listener and Cluster only.
	NodeEnvoy NodeKind = "envoy"
)

// KindOf returns the kind of node that may fetch typeURL (NodeUnknown for
// a type the server does not serve).
func KindOf(typeURL string) NodeKind {
	switch {
	case slices.Contains(mandatev1.TypeURLs(), typeURL):
		return NodeReplica
	case slices.Contains(EnvoyTypeURLs(), typeURL):
		return NodeEnvoy
	}
	return NodeUnknown
}

// Option configures a Server.
type Option func(*options) error

type options struct {
	reg       prometheus.Registerer
	initial   map[string]uint64
	now       func() time.Time
	retention time.Duration
	peerKind  func(context.Context) (NodeKind, error)
	chunk     int
}

// WithChunkBytes sets the budget of one response of a split delta
// (default mandatev1.MaxResponseBytes less room for the envelope). Tests use small
// budgets; it may not exceed the default.
func WithChunkBytes(n int) Option {
	return func(o *options) error {
		if n <= 0 || n > chunkBytes {
			return fmt.Errorf("xdsserver: chunk budget %d outside 1..%d", n, chunkBytes)
		}
		o.chunk = n
		return nil
	}
}

// WithPeerKind classifies each stream when it opens, from its context
// (the peer's mTLS identity). An error refuses the stream; NodeUnknown
// leaves the decision to the first type the stream asks for.
func WithPeerKind(f func(ctx context.Context) (NodeKind, error)) Option {
	return func(o *options) error {
		if f == nil {
			return errors.New("xdsserver: nil peer classifier")
		}
		o.peerKind = f
		return nil
	}
}

// WithRegisterer registers the server's metrics with reg. Without it the
// metrics are kept but not exported.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(o *options) error {
		if reg == nil {
			return errors.New("xdsserver: nil prometheus registerer")
		}
		o.reg = reg
		return nil
	}
}

// WithInitialVersion starts typeURL's version at v instead of 0, so that a
// restarted control plane keeps counting from the version it persisted.
func WithInitialVersion(typeURL string, v uint64) Option {
	return func(o *options) error {
		if !knownType(typeURL) {
			return fmt.Errorf("xdsserver: unknown type URL %q", typeURL)
		}
		o.initial[typeURL] = v
		return nil
	}
}

// WithClock sets the time source used for status timestamps and latency.
func WithClock(now func() time.Time) Option {
	return func(o *options) error {
		if now == nil {
			return errors.New("xdsserver: nil clock")
		}
		o.now = now
		return nil
	}
}

// WithStatusRetention sets how long a disconnected replica stays in
// Status (default 15 minutes).
func WithStatusRetention(d time.Duration) Option {
	return func(o *options) error {
		if d < 0 {
			return errors.New("xdsserver: negative status retention")
		}
		o.retention = d
		return nil
	}
}

func knownType(typeURL string) bool { return KindOf(typeURL) != NodeUnknown }

func allTypeURLs() []string { return slices.Concat(mandatev1.TypeURLs(), EnvoyTypeURLs()) }

// TypeStatus is what one replica reported for one resource type.
type TypeStatus struct {
	// SentVersion is the last version pushed to the replica.
	SentVersion string
	// AckedVersion is the highest version the replica ACKed, and when.
	AckedVersion string
	AckedAt      time.Time
	// NackedVersion is the last version the replica rejected, with the
	// message of its error_detail; empty when it never NACKed or when it
	// ACKed a later version since.
	NackedVersion string
	NackError     string
	NackedAt      time.Time
}

// ReplicaStatus is the state of one node (a replica, or an Envoy in
// EnvoyStatus), keyed by its node id.
type ReplicaStatus struct {
	NodeID    string
	Kind      NodeKind
	Connected bool
	// Streams is the number of open ADS streams carrying this node id.
	Streams        int
	ConnectedSince time.Time
	LastSeen       time.Time
	// Types is keyed by type URL.
	Types map[string]TypeStatus
}

// extHistory is how many cache versions keep their served version (and
// commit time): a response always carries one of the latest.
const extHistory = 1025

type typeState struct {
	cache *cachev3.LinearCache
	// delta serves the delta watches of a mandate.v1 type (and keeps
	// cache, which serves its SotW watches, in step); nil for the Envoy
	// types, served by cache alone.
	delta *deltaCache
	// ext maps a cache version to the version served for it: the
	// previous version plus one, or the version the caller gave (SetAt,
	// UpdateAt: the store's revision). The last extHistory are kept.
	ext     map[uint64]served
	cv      uint64 // the cache's current version
	version uint64
	current map[string]proto.Message
	setAt   map[uint64]time.Time
	// shards, for the Revocation type only, names the records of each
	// non-empty shard, sorted: the cache holds one resource per shard
	// (mandatev1.RevocationShard), not one per record.
	shards map[uint32][]string
	// The type's metrics, resolved once: a response and an ACK do not
	// look their labels up.
	pushes      prometheus.Counter
	propagation prometheus.Observer
	nacks       prometheus.Counter
}

// served is a version served and its decimal text (what every response
// carrying it says).
type served struct {
	v    uint64
	text string
}

type streamKey struct {
	gen   uint64 // the generation serving the stream (see gate)
	delta bool
	id    int64
}

type sent struct {
	typeURL string
	version uint64
	seq     uint64
	// partial: a chunk of a split delta, not the last; its ACK is not an
	// ACK of version.
	partial bool
}

type streamState struct {
	node string
	kind NodeKind
	// peer is the transport-proven identity of the stream's peer (its
	// SPIFFE ID; "" over plaintext), fixed when the stream opens.
	peer   string
	nonces map[string]sent
	// acked and nacked are what this stream answered, per type URL:
	// WaitAcked requires every open stream of a node to have ACKed, so
	// a second stream carrying the node id cannot answer for it.
	acked  map[string]uint64
	nacked map[string]streamNack
	// waiters are the WaitAcked calls waiting for this stream's ACK.
	waiters []*ackWaiter
}

type streamNack struct {
	version uint64
	msg     string
}

type nodeState struct {
	kind NodeKind
	// peer is the identity the node id is bound to: the peer of its first
	// stream. A stream from another peer may not use the node id while
	// the node is known (connected, or retained after it disconnected).
	peer           string
	streams        int
	connectedSince time.Time
	lastSeen       time.Time
	disconnectedAt time.Time
	types          map[string]*nodeType
}

type nodeType struct {
	sent, acked, nacked uint64
	hasAck, hasNack     bool
	ackedAt, nackedAt   time.Time
	nackErr             string
}

// Server is an ADS server for Mandate's resource types. Create it with New.
type Server struct {
	log      *slog.Logger
	now      func() time.Time
	keep     time.Duration
	peerKind func(context.Context) (NodeKind, error)

	ctx    context.Context
	cancel context.CancelFunc
	mux    *cachev3.MuxCache

	setMu sync.Mutex // serializes Set* calls

	mu      sync.Mutex
	types   map[string]*typeState
	streams map[streamKey]*streamState
	nodes   map[string]*nodeState
	changed chan struct{} // closed and replaced on every status change
	// changedTaken: Changed handed out changed since it was last closed.
	changedTaken bool
	// waiters are the WaitAcked calls waiting (see ackWaiter).
	waiters map[*ackWaiter]struct{}

	gate gate // Suspend, Resume

	m metrics
}

type metrics struct {
	connected   prometheus.Gauge
	envoys      prometheus.Gauge
	nacks       *prometheus.CounterVec
	pushes      *prometheus.CounterVec
	propagation *prometheus.HistogramVec
	version     *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mandate", Subsystem: "xds_server", Name: "connected_replicas",
			Help: "Replicas (distinct node ids) with at least one open ADS stream.",
		}),
		envoys: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mandate", Subsystem: "xds_server", Name: "connected_envoys",
			Help: "Envoy proxies (distinct node ids) with at least one open ADS stream.",
		}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mandate", Subsystem: "xds_server", Name: "nacks_total",
			Help: "NACKs received from replicas and Envoys, by resource type.",
		}, []string{"type"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mandate", Subsystem: "xds_server", Name: "pushes_total",
			Help: "Discovery responses sent to replicas, by resource type.",
		}, []string{"type"}),
		propagation: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "mandate", Subsystem: "xds_server", Name: "propagation_seconds",
			Help:    "Time from a Set to a replica's ACK of that version, by resource type.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}, []string{"type"}),
		version: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "mandate", Subsystem: "xds_server", Name: "version",
			Help: "Current version of each resource type.",
		}, []string{"type"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.connected, m.envoys, m.nacks, m.pushes, m.propagation, m.version} {
			if err := reg.Register(c); err != nil {
				return metrics{}, fmt.Errorf("xdsserver: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// New builds a Server. Call Register to serve it and Close to end it.
func New(logger *slog.Logger, opts ...Option) (*Server, error) {
	if logger == nil {
		return nil, errors.New("xdsserver: nil logger")
	}
	o := options{initial: map[string]uint64{}, now: time.Now, retention: 15 * time.Minute, chunk: chunkBytes}
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			return nil, err
		}
	}
	m, err := newMetrics(o.reg)
	if err != nil {
		return nil, err
	}
	s := &Server{
		log:      logger,
		now:      o.now,
		peerKind: o.peerKind,
		keep:     o.retention,
		types:    map[string]*typeState{},
		streams:  map[streamKey]*streamState{},
		nodes:    map[string]*nodeState{},
		changed:  make(chan struct{}),
		m:        m,
	}
	glog := cacheLogger(logger)
	mux := &cachev3.MuxCache{
		Classify:      func(r *cachev3.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cachev3.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        map[string]cachev3.Cache{},
	}
	for _, t := range allTypeURLs() {
		c := cachev3.NewLinearCache(t, cachev3.WithLogger(glog))
		label := shortType(t)
		s.types[t] = &typeState{cache: c, ext: map[uint64]served{0: {o.initial[t], format(o.initial[t])}}, version: o.initial[t],
			current: map[string]proto.Message{}, setAt: map[uint64]time.Time{},
			pushes: m.pushes.WithLabelValues(label), propagation: m.propagation.WithLabelValues(label),
			nacks: m.nacks.WithLabelValues(label)}
		if t == mandatev1.RevocationTypeURL {
			s.types[t].shards = map[uint32][]string{}
		}
		mux.Caches[t] = c
		if KindOf(t) == NodeReplica {
			budget := 0
			if splittable(t) {
				budget = o.chunk
			}
			s.types[t].delta = newDeltaCache(c, t, budget)
			mux.Caches[t] = s.types[t].delta
		}
		m.version.WithLabelValues(shortType(t)).Set(float64(o.initial[t]))
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.mux = mux
	s.gate.gen = s.newGeneration(1)
	return s, nil
}

// Register adds the aggregated discovery service (delta and SotW ADS) to g.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, gated{s: s})
}

// Close ends every open stream. The Server cannot be used after Close.
func (s *Server) Close() { s.cancel() }

// SetPolicies replaces the whole set of Policy resources (keyed by name)
// and returns the resulting version.
func (s *Server) SetPolicies(res map[string]*mandatev1.Policy) (string, error) {
	return setTyped(s, mandatev1.PolicyTypeURL, res)
}

// SetRevocations replaces the whole set of Revocation resources.
func (s *Server) SetRevocations(res map[string]*mandatev1.Revocation) (string, error) {
	return setTyped(s, mandatev1.RevocationTypeURL, res)
}

// UpdateRevocations puts (adds or replaces) and deletes Revocation
// resources, leaving every other one as it is, and returns the resulting
// version: one new version when anything changed, the current one when
// nothing did (a put equal to what is held, a delete of a name not held).
// A name may not be both put and deleted. Its cost is in the number of
// names given, not the number of resources held.
func (s *Server) UpdateRevocations(put map[string]*mandatev1.Revocation, del []string) (string, error) {
	return updateTyped(s, mandatev1.RevocationTypeURL, put, del)
}

// UpdateApprovals is UpdateRevocations for Approval resources.
func (s *Server) UpdateApprovals(put map[string]*mandatev1.Approval, del []string) (string, error) {
	return updateTyped(s, mandatev1.ApprovalTypeURL, put, del)
}

// SetApprovals replaces the whole set of Approval resources.
func (s *Server) SetApprovals(res map[string]*mandatev1.Approval) (string, error) {
	return setTyped(s, mandatev1.ApprovalTypeURL, res)
}

// SetKeys replaces the whole set of VerificationKey resources.
func (s *Server) SetKeys(res map[string]*mandatev1.VerificationKey) (string, error) {
	return setTyped(s, mandatev1.VerificationKeyTypeURL, res)
}

// SetListeners replaces the whole set of Envoy Listener resources served
// over LDS. Validate them (envoy/envoyconf) before: the server does not.
func (s *Server) SetListeners(res map[string]*listenerv3.Listener) (string, error) {
	return setTyped(s, ListenerTypeURL, res)
}

// SetClusters replaces the whole set of Envoy Cluster resources served
// over CDS.
func (s *Server) SetClusters(res map[string]*clusterv3.Cluster) (string, error) {
	return setTyped(s, ClusterTypeURL, res)
}

type named interface {
	proto.Message
	GetName() string
}

func setTyped[M named](s *Server, typeURL string, res map[string]M) (string, error) {
	msgs, err := cloneNamed(typeURL, res)
	if err != nil {
		return "", err
	}
	return s.apply(typeURL, msgs, nil, true, 0)
}

// SetAt replaces the whole set of resources of a mandate.v1 type and
// serves the result as version at (the store's version of the write),
// which must be above the type's current version. When nothing changed,
// the current version stays and is returned.
func (s *Server) SetAt(typeURL string, at uint64, res map[string]proto.Message) (string, error) {
	msgs, err := cloneMessages(typeURL, res)
	if err != nil {
		return "", err
	}
	return s.apply(typeURL, msgs, nil, true, at)
}

// UpdateAt puts and deletes resources of a mandate.v1 type, leaving the
// others, and serves the result as version at; see SetAt.
func (s *Server) UpdateAt(typeURL string, at uint64, put map[string]proto.Message, del []string) (string, error) {
	msgs, err := cloneMessages(typeURL, put)
	if err != nil {
		return "", err
	}
	if err := checkDeletes(typeURL, msgs, del); err != nil {
		return "", err
	}
	return s.apply(typeURL, msgs, del, false, at)
}

func cloneMessages(typeURL string, res map[string]proto.Message) (map[string]proto.Message, error) {
	if KindOf(typeURL) != NodeReplica {
		return nil, fmt.Errorf("xdsserver: %q is not a mandate.v1 type", typeURL)
	}
	msgs := make(map[string]proto.Message, len(res))
	for name, r := range res {
		n, ok := r.(named)
		if !ok || r == nil || !r.ProtoReflect().IsValid() {
			return nil, fmt.Errorf("xdsserver: %s %q: nil or unnamed resource", shortType(typeURL), name)
		}
		if name == "" || n.GetName() != name {
			return nil, fmt.Errorf("xdsserver: %s: key %q does not match resource name %q", shortType(typeURL), name, n.GetName())
		}
		if string(r.ProtoReflect().Descriptor().FullName()) != shortTypeFull(typeURL) {
			return nil, fmt.Errorf("xdsserver: %s %q: a %s is not of this type", shortType(typeURL), name, r.ProtoReflect().Descriptor().FullName())
		}
		msgs[name] = proto.Clone(r)
	}
	return msgs, nil
}

func shortTypeFull(typeURL string) string {
	const prefix = "type.googleapis.com/"
	if len(typeURL) > len(prefix) {
		return typeURL[len(prefix):]
	}
	return typeURL
}

func checkDeletes(typeURL string, msgs map[string]proto.Message, del []string) error {
	for _, name := range del {
		if name == "" {
			return fmt.Errorf("xdsserver: %s: delete of an empty name", shortType(typeURL))
		}
		if _, ok := msgs[name]; ok {
			return fmt.Errorf("xdsserver: %s %q: both put and deleted", shortType(typeURL), name)
		}
	}
	return nil
}

// updateTyped puts and deletes some resources of a type, leaving the
// others as they are. Only put is cloned and compared: the cost is in
// the number of resources named, not the number held.
func updateTyped[M named](s *Server, typeURL string, put map[string]M, del []string) (string, error) {
	msgs, err := cloneNamed(typeURL, put)
	if err != nil {
		return "", err
	}
	if err := checkDeletes(typeURL, msgs, del); err != nil {
		return "", err
	}
	return s.apply(typeURL, msgs, del, false, 0)
}

func cloneNamed[M named](typeURL string, res map[string]M) (map[string]proto.Message, error) {
	msgs := make(map[string]proto.Message, len(res))
	for name, r := range res {
		var zero M
		if any(r) == any(zero) {
			return nil, fmt.Errorf("xdsserver: %s %q: nil resource", shortType(typeURL), name)
		}
		if name == "" || r.GetName() != name {
			return nil, fmt.Errorf("xdsserver: %s: key %q does not match resource name %q", shortType(typeURL), name, r.GetName())
		}
		msgs[name] = proto.Clone(r)
	}
	return msgs, nil
}

// apply makes msgs (owned by the server from now on) the content of
// their names and removes del; with replace, msgs is the whole new set
// and every other name is removed. When anything changed the type gets a
// new version: at, when given (it must be above the current one), else
// the current one plus one.
func (s *Server) apply(typeURL string, msgs map[string]proto.Message, del []string, replace bool, at uint64) (string, error) {
	s.setMu.Lock()
	defer s.setMu.Unlock()

	// ts.current is read and written only under setMu.
	s.mu.Lock()
	ts := s.types[typeURL]
	s.mu.Unlock()
	update := map[string]types.Resource{}
	var remove []string
	for name, m := range msgs {
		if old, ok := ts.current[name]; !ok || !proto.Equal(old, m) {
			update[name] = m
		}
	}
	if replace {
		for name := range ts.current {
			if _, ok := msgs[name]; !ok {
				remove = append(remove, name)
			}
		}
	} else {
		for _, name := range del {
			if _, ok := ts.current[name]; ok && !slices.Contains(remove, name) {
				remove = append(remove, name)
			}
		}
	}
	s.mu.Lock()
	if len(update) == 0 && len(remove) == 0 {
		v := ts.version
		s.mu.Unlock()
		return format(v), nil
	}
	next := ts.version + 1
	if at > 0 {
		if at <= ts.version {
			v := ts.version
			s.mu.Unlock()
			return format(v), fmt.Errorf("xdsserver: %s: version %d is not above the current %d", shortType(typeURL), at, v)
		}
		next = at
	}
	// The linear cache raises its version by exactly one per call.
	ts.cv++
	ts.ext[ts.cv] = served{next, format(next)}
	if old, ok := ts.ext[ts.cv-extHistory]; ok && ts.cv >= extHistory {
		delete(ts.ext, ts.cv-extHistory)
		delete(ts.setAt, old.v)
	}
	ts.setAt[next] = s.now()
	s.mu.Unlock()

	if replace {
		ts.current = msgs
	} else {
		for name, m := range update {
			ts.current[name] = m.(proto.Message)
		}
		for _, name := range remove {
			delete(ts.current, name)
		}
	}
	if ts.shards != nil {
		update, remove = ts.reshard(update, remove)
	}
	var err error
	if ts.delta != nil {
		err = ts.delta.update(update, remove)
	} else {
		err = ts.cache.UpdateResources(update, remove)
	}

	s.mu.Lock()
	ts.version = next
	s.mu.Unlock()
	s.m.version.WithLabelValues(shortType(typeURL)).Set(float64(next))
	s.log.Info("xds resources set", "type", shortType(typeURL), "version", next,
		"updated", len(update), "removed", len(remove), "total", len(ts.current))
	if err != nil {
		return format(next), fmt.Errorf("xdsserver: notify watches for %s: %w", shortType(typeURL), err)
	}
	return format(next), nil
}

// Versions returns the current version of every mandate.v1 type, keyed by
// type URL.
func (s *Server) Versions() map[string]string { return s.versions(NodeReplica) }

// EnvoyVersions returns the current version of the Listener and Cluster
// types, keyed by type URL.
func (s *Server) EnvoyVersions() map[string]string { return s.versions(NodeEnvoy) }

func (s *Server) versions(kind NodeKind) map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]string, len(s.types))
	for t, ts := range s.types {
		if KindOf(t) == kind {
			out[t] = format(ts.version)
		}
	}
	return out
}

// Status returns every connected replica, and disconnected ones for the
// retention period, sorted by node id. Envoys are not in it: see
// EnvoyStatus.
func (s *Server) Status() []ReplicaStatus { return s.status(NodeReplica) }

// EnvoyStatus returns every connected Envoy, and disconnected ones for the
// retention period, sorted by node id, with their Listener and Cluster
// ACK/NACK state.
func (s *Server) EnvoyStatus() []ReplicaStatus { return s.status(NodeEnvoy) }

func (s *Server) status(kind NodeKind) []ReplicaStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pruneLocked()
	out := make([]ReplicaStatus, 0, len(s.nodes))
	for id, n := range s.nodes {
		if n.kind != kind {
			continue
		}
		rs := ReplicaStatus{NodeID: id, Kind: n.kind, Connected: n.streams > 0, Streams: n.streams,
			ConnectedSince: n.connectedSince, LastSeen: n.lastSeen, Types: map[string]TypeStatus{}}
		for t, nt := range n.types {
			st := TypeStatus{}
			if nt.sent > 0 || nt.hasAck || nt.hasNack {
				st.SentVersion = format(nt.sent)
			}
			if nt.hasAck {
				st.AckedVersion, st.AckedAt = format(nt.acked), nt.ackedAt
			}
			if nt.hasNack {
				st.NackedVersion, st.NackError, st.NackedAt = format(nt.nacked), nt.nackErr, nt.nackedAt
			}
			rs.Types[t] = st
		}
		out = append(out, rs)
	}
	slices.SortFunc(out, func(a, b ReplicaStatus) int {
		switch {
		case a.NodeID < b.NodeID:
			return -1
		case a.NodeID > b.NodeID:
			return 1
		}
		return 0
	})
	return out
}

// WaitAcked blocks until every connected node of typeURL's kind (replicas
// for mandate.v1 types, Envoys for Listener and Cluster) has ACKed a
// version of typeURL at least version, or ctx ends. A node is acked when
// every stream open with its node id has ACKed on that stream. With no such node
// connected it returns nil at once: check Status (EnvoyStatus) to tell
// "nobody" from "everybody".
func (s *Server) WaitAcked(ctx context.Context, typeURL, version string) error {
	_, err := s.wait(ctx, typeURL, version, false)
	return err
}

// RejectedError is returned by WaitAckedOrRejected when a connected node
// NACKed the version waited for (or a later one) and has not ACKed it
// since.
type RejectedError struct {
	Node, Version, Message string
}

func (e *RejectedError) Error() string {
	return fmt.Sprintf("xdsserver: node %s rejected version %s: %s", e.Node, e.Version, e.Message)
}

// WaitAckedOrRejected is WaitAcked that also ends, with a *RejectedError,
// as soon as a connected node rejects the version; on success it returns
// how many connected nodes of the kind have ACKed it.
func (s *Server) WaitAckedOrRejected(ctx context.Context, typeURL, version string) (int, error) {
	return s.wait(ctx, typeURL, version, true)
}

func (s *Server) wait(ctx context.Context, typeURL, version string, stopOnNack bool) (int, error) {
	if !knownType(typeURL) {
		return 0, fmt.Errorf("xdsserver: unknown type URL %q", typeURL)
	}
	want, err := strconv.ParseUint(version, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("xdsserver: bad version %q: %w", version, err)
	}
	kind := KindOf(typeURL)
	for {
		s.mu.Lock()
		// A node counts as acked only when every stream open with its
		// node id ACKed: one stream cannot vouch for another.
		lag := make(map[string]bool, len(s.nodes))
		var rejected *RejectedError
		var behind []*streamState
		for _, st := range s.streams {
			if st.node == "" || st.kind != kind {
				continue
			}
			if v, ok := st.acked[typeURL]; ok && v >= want {
				if _, seen := lag[st.node]; !seen {
					lag[st.node] = false
				}
				continue
			}
			lag[st.node] = true
			behind = append(behind, st)
			if nk, ok := st.nacked[typeURL]; stopOnNack && ok && nk.version >= want &&
				(rejected == nil || st.node < rejected.Node) {
				rejected = &RejectedError{Node: st.node, Version: format(nk.version), Message: nk.msg}
			}
		}
		var lagging []string
		acked := 0
		for id, l := range lag {
			if l {
				lagging = append(lagging, id)
			} else {
				acked++
			}
		}
		if rejected != nil {
			s.mu.Unlock()
			return 0, rejected
		}
		if len(lagging) == 0 {
			s.mu.Unlock()
			return acked, nil
		}
		w := &ackWaiter{typeURL: typeURL, want: want, stopOnNack: stopOnNack, ch: make(chan struct{})}
		s.addWaiterLocked(w, behind)
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			s.mu.Lock()
			s.dropWaiterLocked(w, behind)
			s.mu.Unlock()
			slices.Sort(lagging)
			return 0, fmt.Errorf("xdsserver: waiting for %s version %s: replicas not acked: %v: %w",
				shortType(typeURL), version, lagging, ctx.Err())
		case <-w.ch:
			s.mu.Lock()
			s.dropWaiterLocked(w, behind)
			s.mu.Unlock()
		}
	}
}

// notifyLocked closes the channel Changed handed out, if it handed one
// out since the last change: an ACK nobody listens to allocates nothing.
func (s *Server) notifyLocked() {
	if s.changedTaken {
		close(s.changed)
		s.changed = make(chan struct{})
		s.changedTaken = false
	}
}

func (s *Server) pruneLocked() {
	now := s.now()
	for id, n := range s.nodes {
		if n.streams == 0 && now.Sub(n.disconnectedAt) > s.keep {
			delete(s.nodes, id)
		}
	}
}

func format(v uint64) string { return strconv.FormatUint(v, 10) }

// shortType turns a type URL into the message name for labels and logs
// (Policy, ..., Listener, Cluster).
func shortType(typeURL string) string {
	for _, prefix := range []string{"type.googleapis.com/mandate.v1.", "type.googleapis.com/envoy.config.listener.v3.",
		"type.googleapis.com/envoy.config.cluster.v3."} {
		if len(typeURL) > len(prefix) && typeURL[:len(prefix)] == prefix {
			return typeURL[len(prefix):]
		}
	}
	return typeURL
}

// cacheLogger routes go-control-plane's logs to slog; its info-level lines
// (one per watch) go to debug.
func cacheLogger(l *slog.Logger) gcplog.Logger {
	// go-control-plane formats whole subscriptions into its debug lines
	// (a million-entry map for a replica holding a million records):
	// format only what is logged.
	logf := func(level slog.Level, f string, a []any) {
		if l.Enabled(context.Background(), level) {
			l.Log(context.Background(), level, fmt.Sprintf(f, a...), "component", "go-control-plane")
		}
	}
	return gcplog.LoggerFuncs{
		DebugFunc: func(f string, a ...any) { logf(slog.LevelDebug, f, a) },
		InfoFunc:  func(f string, a ...any) { logf(slog.LevelDebug, f, a) },
		WarnFunc:  func(f string, a ...any) { logf(slog.LevelWarn, f, a) },
		ErrorFunc: func(f string, a ...any) { logf(slog.LevelError, f, a) },
	}
}
