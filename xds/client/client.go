// Package xdsclient is the delta-ADS client a mandate-authz replica uses to
// follow the control plane: it subscribes to every mandate.v1 resource type
// (wildcard), validates each type's resource set (decoding and checking
// only the resources a response changed; Revocations are indexed
// incrementally), hands the result to Apply, and only then ACKs, so an ACK means "this replica enforces it".
// A set that does not validate (or that Apply refuses) is NACKed with the
// reason and the last good set of that type stays in force; the types are
// independent, so a bad Policy never holds back a Revocation.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/mandate-dev/mandate/authz/revocation"
	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// State is everything a replica enforces, as last applied. Each type holds
// the last set that validated; types never synced hold their empty value
// (Policies from policies.Compile(nil), which denies everything).
type State struct {
	Policies    *policies.Set
	Revocations *revocation.Set
	Approvals   []*mandatev1.Approval
	Keys        []*mandatev1.VerificationKey
	// Versions maps type URL to the control plane's version of the set
	// applied; a type never applied is absent.
	Versions map[string]string
}

// Clock is the time source for backoff, heartbeats and LastContact.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config configures a Client.
type Config struct {
	// Conn is the connection to the control plane. When nil, Target and
	// DialOptions are used to create one (and Close closes it).
	Conn        grpc.ClientConnInterface
	Target      string
	DialOptions []grpc.DialOption
	// Conns and Targets list several control-plane instances (mandate-cp
	// on one etcd) instead of Conn or Target: the client holds one stream
	// at a time and moves to the next instance when its stream breaks or
	// the instance refuses it, resuming with the versions it holds
	// (initial_resource_versions), so it gets only what changed while it
	// was away, deletions included. Connections made from Targets use
	// DialOptions and are closed by Close.
	Conns   []grpc.ClientConnInterface
	Targets []string
	// ConnNames name the Conns in logs (default #1, #2, ...).
	ConnNames []string
	// NodeID identifies this replica to the control plane (node.id).
	NodeID string
	Logger *slog.Logger
	// Apply installs a new State. It is called from Run's goroutine, one
	// call at a time, before the update is ACKed; an error NACKs it.
	Apply func(State) error
	// Clock defaults to the real clock.
	Clock Clock
	// BackoffMin and BackoffMax bound the jittered exponential reconnect
	// delay (defaults 100ms and 30s).
	BackoffMin, BackoffMax time.Duration
	// Heartbeat is how often an idle stream asks the server for a
	// (usually empty) response, which proves the control plane alive for
	// LastContact (default 30s; negative disables).
	Heartbeat time.Duration
	// Registerer receives the client's metrics; nil keeps them private.
	Registerer prometheus.Registerer
	// MaxRecvBytes is the largest response accepted on the stream
	// (default and at least mandatev1.MaxResponseBytes, what mandate-cp
	// may send).
	MaxRecvBytes int
}

type typeData struct {
	// received is what the server believes this replica holds: every
	// resource it sent, valid or not. Deltas apply on top of it.
	received map[string]entry
	// good is the last set that validated and was applied; dec holds the
	// decoded, validated form of each of its resources (not kept for
	// Revocations: their Set is that form, and rev what else is kept).
	good compiled
	dec  map[string]any
	rev  revState
	// dirty names the resources whose received form is not (or may not
	// be) what good holds: the only ones the next build decodes.
	dirty      map[string]struct{}
	version    string
	applied    bool
	pendingErr error
	// The type's metrics, resolved once: a response does not look its
	// labels up.
	appliedTotal, decodedTotal, nackTotal prometheus.Counter
	// scratch is the map build stages the decoded resources in, kept
	// empty between responses (a small one is reused, not reallocated).
	scratch map[string]any
}

// maxScratch bounds the staging map kept for the next response: one a
// large sync grew is dropped.
const maxScratch = 256

// Client follows the control plane. Create it with New and call Run.
type Client struct {
	cfg     Config
	log     *slog.Logger
	clock   Clock
	servers []server // the control-plane instances, tried in turn
	cur     int      // the instance of the current (or next) stream; owned by Run
	owned   []*grpc.ClientConn
	min     time.Duration
	max     time.Duration
	hb      time.Duration
	running atomic.Bool

	// Owned by the Run goroutine.
	types map[string]*typeData
	rng   *rand.Rand

	synced      atomic.Bool
	lastContact atomic.Int64 // unix nanoseconds; 0 = never

	m metrics
}

type metrics struct {
	applied   *prometheus.CounterVec
	decoded   *prometheus.CounterVec
	nacks     *prometheus.CounterVec
	behind    prometheus.Counter
	connected prometheus.Gauge
	lastSync  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (metrics, error) {
	m := metrics{
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mandate", Subsystem: "xds_client", Name: "updates_applied_total",
			Help: "Resource updates validated, applied and ACKed, by type.",
		}, []string{"type"}),
		decoded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mandate", Subsystem: "xds_client", Name: "resources_decoded_total",
			Help: "Resources decoded and validated, by type; only those a response changed are.",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mandate", Subsystem: "xds_client", Name: "nacks_total",
			Help: "Resource updates rejected (NACKed), by type.",
		}, []string{"type"}),
		behind: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "mandate", Subsystem: "xds_client", Name: "behind_responses_total",
			Help: "Responses refused because their version is older than the one applied (an instance that had not caught up with the store); the stream is ended.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mandate", Subsystem: "xds_client", Name: "connected",
			Help: "1 while an ADS stream to the control plane is delivering responses.",
		}),
		lastSync: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "mandate", Subsystem: "xds_client", Name: "last_sync_timestamp_seconds",
			Help: "Unix time of the last update applied and ACKed.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.applied, m.decoded, m.nacks, m.behind, m.connected, m.lastSync} {
			if err := reg.Register(c); err != nil {
				return metrics{}, fmt.Errorf("xdsclient: register metrics: %w", err)
			}
		}
	}
	return m, nil
}

// New validates cfg and builds a Client. It does not connect.
func New(cfg Config) (*Client, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("xdsclient: empty NodeID")
	}
	if cfg.Apply == nil {
		return nil, errors.New("xdsclient: nil Apply")
	}
	if cfg.Logger == nil {
		return nil, errors.New("xdsclient: nil Logger")
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 100 * time.Millisecond
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = 30 * time.Second
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		return nil, fmt.Errorf("xdsclient: BackoffMax %v below BackoffMin %v", cfg.BackoffMax, cfg.BackoffMin)
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 30 * time.Second
	}
	if cfg.MaxRecvBytes == 0 {
		cfg.MaxRecvBytes = mandatev1.MaxResponseBytes
	}
	if cfg.MaxRecvBytes < mandatev1.MaxResponseBytes {
		return nil, fmt.Errorf("xdsclient: MaxRecvBytes %d below what the control plane may send (%d)", cfg.MaxRecvBytes, mandatev1.MaxResponseBytes)
	}
	c := &Client{
		cfg: cfg, log: cfg.Logger, clock: cfg.Clock,
		min: cfg.BackoffMin, max: cfg.BackoffMax, hb: cfg.Heartbeat,
		types: map[string]*typeData{},
		rng:   rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
	}
	empty, err := policies.Compile(nil)
	if err != nil {
		return nil, fmt.Errorf("xdsclient: compile empty policy set: %w", err)
	}
	if c.m, err = newMetrics(cfg.Registerer); err != nil {
		return nil, err
	}
	for _, t := range mandatev1.TypeURLs() {
		c.types[t] = &typeData{received: map[string]entry{}, good: emptyCompiled(t),
			dec: map[string]any{}, rev: revState{shards: map[string]string{}}, dirty: map[string]struct{}{},
			appliedTotal: c.m.applied.WithLabelValues(short(t)), decodedTotal: c.m.decoded.WithLabelValues(short(t)),
			nackTotal: c.m.nacks.WithLabelValues(short(t))}
	}
	c.types[mandatev1.PolicyTypeURL].good.policies = empty
	if err := c.connect(cfg); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// server is one control-plane instance.
type server struct {
	name string
	ads  discovery.AggregatedDiscoveryServiceClient
}

// connect sets the instances from Conn, Target, Conns or Targets.
func (c *Client) connect(cfg Config) error {
	conns, targets := cfg.Conns, cfg.Targets
	if cfg.Conn != nil {
		conns = append([]grpc.ClientConnInterface{cfg.Conn}, conns...)
	}
	if cfg.Target != "" {
		targets = append([]string{cfg.Target}, targets...)
	}
	if len(conns) > 0 && len(targets) > 0 {
		return errors.New("xdsclient: give connections or targets, not both")
	}
	for i, conn := range conns {
		if conn == nil {
			return fmt.Errorf("xdsclient: connection %d is nil", i)
		}
		name := fmt.Sprintf("#%d", i+1)
		if i < len(cfg.ConnNames) && cfg.Conn == nil {
			name = cfg.ConnNames[i]
		}
		c.servers = append(c.servers, server{name: name, ads: discovery.NewAggregatedDiscoveryServiceClient(conn)})
	}
	if len(targets) > 0 && len(cfg.DialOptions) == 0 {
		return errors.New("xdsclient: Target needs DialOptions (at least transport credentials)")
	}
	for _, t := range targets {
		if t == "" {
			return errors.New("xdsclient: empty target")
		}
		cc, err := grpc.NewClient(t, cfg.DialOptions...)
		if err != nil {
			return fmt.Errorf("xdsclient: dial %s: %w", t, err)
		}
		c.owned = append(c.owned, cc)
		c.servers = append(c.servers, server{name: t, ads: discovery.NewAggregatedDiscoveryServiceClient(cc)})
	}
	if len(c.servers) == 0 {
		return errors.New("xdsclient: neither Conn nor Target set")
	}
	return nil
}

// Close closes the connections New created from targets; it does not
// close connections the caller passed.
func (c *Client) Close() error {
	var errs []error
	for _, cc := range c.owned {
		errs = append(errs, cc.Close())
	}
	return errors.Join(errs...)
}

// Synced reports whether the first response of every resource type has
// been validated and applied. It stays true across reconnects.
func (c *Client) Synced() bool { return c.synced.Load() }

// LastContact is the last time the replica was in contact with the
// control plane: a response (heartbeats included) arrived and was
// applied, every type has been answered on the current stream, and no
// type is holding a rejected update. A replica that receives but cannot
// apply, or whose stream breaks before every type came through (say, on
// a response it cannot receive), is not in contact. The zero time when
// it never was.
func (c *Client) LastContact() time.Time {
	n := c.lastContact.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Run follows the control plane until ctx ends, reconnecting with
// jittered exponential backoff. With several instances, a stream that
// ends (or is refused) moves the client to the next instance, with the
// shortest backoff when the stream had worked or another instance is
// still untried since; the backoff grows only once every instance failed
// in a row. It returns ctx's error. Run must not be called twice at
// once.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("xdsclient: Run already running")
	}
	defer c.running.Store(false)
	backoff := c.min
	failed := 0 // streams in a row that got nothing
	for {
		srv := c.servers[c.cur]
		got, err := c.runStream(ctx, srv)
		c.m.connected.Set(0)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if got {
			backoff, failed = c.min, 0
		} else {
			failed++
		}
		c.cur = (c.cur + 1) % len(c.servers)
		step := backoff
		if failed > 0 && failed < len(c.servers) {
			step = c.min // another instance is still untried
		}
		// Equal jitter: somewhere in [step/2, step].
		wait := step/2 + time.Duration(c.rng.Int64N(int64(step/2)+1))
		c.log.Warn("xds stream to control plane ended; reconnecting", "server", srv.name, "error", err,
			"next", c.servers[c.cur].name, "in", wait)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.clock.After(wait):
		}
		if step == backoff {
			backoff = min(backoff*2, c.max)
		}
	}
}

// runStream runs one delta ADS stream to srv; got reports whether any
// response arrived on it.
func (c *Client) runStream(ctx context.Context, srv server) (got bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	stream, err := srv.ads.DeltaAggregatedResources(sctx, grpc.MaxCallRecvMsgSize(c.cfg.MaxRecvBytes))
	if err != nil {
		return false, fmt.Errorf("xdsclient: open stream: %w", err)
	}
	for i, t := range mandatev1.TypeURLs() {
		req := &discovery.DeltaDiscoveryRequest{
			TypeUrl:                 t,
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: c.knownVersions(t),
		}
		if i == 0 {
			req.Node = &core.Node{Id: c.cfg.NodeID}
		}
		if err := stream.Send(req); err != nil {
			return false, fmt.Errorf("xdsclient: subscribe: %w", err)
		}
	}

	// The responses are received, handled and answered here, in Run's
	// goroutine (no hand-off per response); a heartbeat goroutine only
	// sends, under sendMu (a gRPC stream takes one sender at a time).
	var sendMu sync.Mutex
	send := func(req *discovery.DeltaDiscoveryRequest) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(req)
	}
	hbErr := make(chan error, 1)
	if c.hb > 0 {
		first := c.clock.After(c.hb)
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.heartbeat(sctx, first, send, hbErr, cancel)
		}()
	}

	// answered: the types whose latest response on this stream was
	// accepted; contact counts only once every type has been.
	answered := map[string]bool{}
	for {
		r, err := stream.Recv()
		if err != nil {
			if ctx.Err() != nil {
				return got, ctx.Err()
			}
			select {
			case herr := <-hbErr:
				return got, fmt.Errorf("xdsclient: send heartbeat: %w", herr)
			default:
			}
			return got, fmt.Errorf("xdsclient: receive: %w", err)
		}
		if err := c.notBehind(r); err != nil {
			// Not ACKed or NACKed: this instance has not caught up
			// with what the replica enforces; another may have.
			return got, err
		}
		if !got {
			got = true
			c.m.connected.Set(1)
			c.log.Info("xds stream to control plane established", "server", srv.name)
		}
		reply := c.handle(r)
		if err := send(reply); err != nil {
			return got, fmt.Errorf("xdsclient: send ack: %w", err)
		}
		if _, ok := c.types[r.GetTypeUrl()]; ok && !isPartial(r) {
			answered[r.GetTypeUrl()] = reply.GetErrorDetail() == nil
		}
		if c.inContact(answered) {
			c.lastContact.Store(c.clock.Now().UnixNano())
		}
	}
}

// heartbeat sends a request with no nonce every c.hb until ctx ends: the
// server answers with whatever changed (often nothing), a liveness
// probe. A failed send ends the stream (cancel), its error in errc.
func (c *Client) heartbeat(ctx context.Context, next <-chan time.Time, send func(*discovery.DeltaDiscoveryRequest) error,
	errc chan<- error, cancel context.CancelFunc) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-next:
		}
		if err := send(&discovery.DeltaDiscoveryRequest{TypeUrl: mandatev1.RevocationTypeURL}); err != nil {
			errc <- err
			cancel()
			return
		}
		next = c.clock.After(c.hb)
	}
}

// inContact reports whether every type was answered and accepted on the
// stream and none holds a rejected update.
func (c *Client) inContact(answered map[string]bool) bool {
	for t, td := range c.types {
		if !answered[t] || td.pendingErr != nil {
			return false
		}
	}
	return true
}

// notBehind refuses a response whose version is below the one the
// replica applied for its type. Versions are the store's (global across
// mandate-cp instances), so a lower one comes from an instance whose
// store feed has not caught up yet, for example one that just failed
// over or came back from losing etcd: taking it would bring back what
// was revoked since, or remove what was added since (its resources are
// the older ones, and what it lacks is sent as removed). The replica
// keeps its state and moves on; the stream ends.
func (c *Client) notBehind(r *discovery.DeltaDiscoveryResponse) error {
	td := c.types[r.GetTypeUrl()]
	if td == nil || td.version == "" {
		return nil
	}
	have, err := strconv.ParseUint(td.version, 10, 64)
	if err != nil {
		return nil // not a store version (a test server): nothing to compare
	}
	v := strings.TrimSuffix(r.GetSystemVersionInfo(), mandatev1.PartialVersionSuffix)
	got, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return fmt.Errorf("xdsclient: %s response version %q is not a version, after version %d", short(r.GetTypeUrl()), v, have)
	}
	if got < have {
		c.m.behind.Inc()
		return fmt.Errorf("xdsclient: control plane is behind: %s version %d is older than the applied %d; keeping the applied state", short(r.GetTypeUrl()), got, have)
	}
	return nil
}

func isPartial(r *discovery.DeltaDiscoveryResponse) bool {
	return strings.HasSuffix(r.GetSystemVersionInfo(), mandatev1.PartialVersionSuffix)
}

func (c *Client) knownVersions(typeURL string) map[string]string {
	td := c.types[typeURL]
	if len(td.received) == 0 {
		return nil
	}
	out := make(map[string]string, len(td.received))
	for n, e := range td.received {
		out[n] = e.version
	}
	return out
}

// handle processes one response and returns the ACK or NACK to send.
func (c *Client) handle(r *discovery.DeltaDiscoveryResponse) *discovery.DeltaDiscoveryRequest {
	t := r.GetTypeUrl()
	reply := &discovery.DeltaDiscoveryRequest{TypeUrl: t, ResponseNonce: r.GetNonce()}
	td := c.types[t]
	if td == nil {
		reply.ErrorDetail = nack("unsupported resource type %q", t)
		c.log.Warn("xds response of unsupported type rejected", "type", t)
		return reply
	}
	version := r.GetSystemVersionInfo()
	changed := len(r.GetResources()) > 0 || len(r.GetRemovedResources()) > 0
	var malformed error
	for _, name := range r.GetRemovedResources() {
		delete(td.received, name)
		td.dirty[name] = struct{}{}
	}
	for _, res := range r.GetResources() {
		if res.GetName() == "" {
			malformed = errors.New("resource with an empty name")
			continue
		}
		td.received[res.GetName()] = entry{version: res.GetVersion(), res: res.GetResource()}
		td.dirty[res.GetName()] = struct{}{}
	}

	var err error
	switch {
	case malformed != nil:
		err = malformed
	case isPartial(r):
		// One chunk of a split delta: kept (received, dirty) and ACKed;
		// the type is built and applied with the last chunk.
		return reply
	case !changed && td.applied && td.pendingErr == nil:
		// Nothing new (a heartbeat, or a reconnect with nothing missed).
		if version != td.version {
			prevVersion := td.version
			td.version = version
			if err := c.cfg.Apply(c.state()); err != nil {
				td.version = prevVersion
				td.pendingErr = fmt.Errorf("apply: %w", err)
				return c.reject(reply, t, version, td.pendingErr)
			}
		}
		c.accepted(t, td, version, false)
		return reply
	case !changed && td.pendingErr != nil:
		err = td.pendingErr
	default:
		var (
			comp    compiled
			decoded int
		)
		if t == mandatev1.RevocationTypeURL {
			comp.revocations, err = buildRevocations(td.good.revocations, &td.rev, td.received, td.dirty, &decoded)
		} else {
			if td.scratch == nil {
				td.scratch = map[string]any{}
			}
			comp, err = build(t, td.good, td.dec, td.received, td.dirty, td.scratch, &decoded)
		}
		td.decodedTotal.Add(float64(decoded))
		if err == nil {
			prev, prevVersion := td.good, td.version
			td.good, td.version = comp, version
			if aerr := c.cfg.Apply(c.state()); aerr != nil {
				td.good, td.version = prev, prevVersion
				err = fmt.Errorf("apply: %w", aerr)
			} else {
				td.commit()
			}
		}
		// Emptied whatever happened (a failed build may have staged
		// some): the next response starts from nothing.
		if len(td.scratch) > maxScratch {
			td.scratch = nil
		} else {
			clear(td.scratch)
		}
		td.rev.reset()
	}
	if err != nil {
		td.pendingErr = err
		return c.reject(reply, t, version, err)
	}
	td.pendingErr = nil
	c.accepted(t, td, version, true)
	return reply
}

// commit records that good now holds every dirty resource: td.scratch
// (td.rev.staged for Revocations) holds the decoded form of those still
// received. The raw form of those resources is dropped (only their
// version is kept, for resuming): what good holds is never decoded
// again.
func (td *typeData) commit() {
	td.rev.commit(td.dirty)
	for name := range td.dirty {
		if v, ok := td.scratch[name]; ok {
			td.dec[name] = v
		} else {
			delete(td.dec, name)
		}
		if e, ok := td.received[name]; ok {
			e.res = nil
			td.received[name] = e
		}
	}
	clear(td.dirty)
}

func (c *Client) reject(reply *discovery.DeltaDiscoveryRequest, t, version string, err error) *discovery.DeltaDiscoveryRequest {
	reply.ErrorDetail = nack("%s version %s rejected: %v", short(t), version, err)
	c.types[t].nackTotal.Inc()
	c.log.Warn("xds update rejected; keeping the last good set", "type", short(t), "version", version, "error", err)
	return reply
}

func (c *Client) accepted(t string, td *typeData, version string, changed bool) {
	first := !td.applied
	td.applied, td.version = true, version
	now := c.clock.Now()
	c.m.lastSync.Set(float64(now.UnixNano()) / 1e9)
	if changed || first {
		td.appliedTotal.Inc()
		// Typed attributes: nothing is boxed when the level is off.
		c.log.LogAttrs(context.Background(), slog.LevelInfo, "xds update applied",
			slog.String("type", short(t)), slog.String("version", version), slog.Int("resources", len(td.received)))
	}
	if first && !c.synced.Load() {
		for _, x := range c.types {
			if !x.applied {
				return
			}
		}
		c.synced.Store(true)
		c.log.Info("xds synced with control plane")
	}
}

// state builds the State from every type's last good set.
func (c *Client) state() State {
	s := State{
		Policies:    c.types[mandatev1.PolicyTypeURL].good.policies,
		Revocations: c.types[mandatev1.RevocationTypeURL].good.revocations,
		Approvals:   slices.Clone(c.types[mandatev1.ApprovalTypeURL].good.approvals),
		Keys:        slices.Clone(c.types[mandatev1.VerificationKeyTypeURL].good.keys),
		Versions:    map[string]string{},
	}
	for t, td := range c.types {
		if td.applied || td.version != "" {
			s.Versions[t] = td.version
		}
	}
	return s
}

func nack(format string, args ...any) *rpcstatus.Status {
	return &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: fmt.Sprintf(format, args...)}
}
