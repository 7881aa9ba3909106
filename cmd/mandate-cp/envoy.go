package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"google.golang.org/grpc/peer"

	"github.com/mandate-dev/mandate/envoy/envoyconf"
	"github.com/mandate-dev/mandate/internal/cmdutil"
	"github.com/mandate-dev/mandate/internal/transport"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// envoyOptions are the flags for serving Envoy listeners and clusters
// (LDS/CDS) next to Mandate's own resources.
type envoyOptions struct {
	dir      string
	ids      cmdutil.List
	debounce time.Duration
}

func (e *envoyOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&e.dir, "envoy-dir", "", "directory of Envoy listener and cluster files (envoy/envoyconf format) served over LDS/CDS; checked against Mandate's wiring rules, reloaded on change and on SIGHUP")
	fs.Var(&e.ids, "envoy-id", "SPIFFE ID pattern of Envoy proxies allowed to fetch listeners and clusters on the xDS listener (repeatable; they may fetch nothing else)")
	e.debounce = 250 * time.Millisecond
}

// allowed returns the SPIFFE ID patterns admitted on the xDS listener.
func (e *envoyOptions) allowed(replicaIDs []string) []string {
	return append(append([]string(nil), replicaIDs...), e.ids...)
}

// serverOptions returns the xDS server option that classifies each stream
// by its peer's SPIFFE ID: a --replica-id is a replica (mandate.v1 types
// only), an --envoy-id an Envoy (Listener and Cluster only). An identity
// matching both is refused. Without mTLS (--plaintext) the first type a
// stream asks for decides.
func (e *envoyOptions) serverOptions(replicaIDs []string) ([]xdsserver.Option, error) {
	rep, err := transport.Authorizer(replicaIDs)
	if err != nil {
		return nil, fmt.Errorf("--replica-id: %w", err)
	}
	var env tlsconfig.Authorizer
	if len(e.ids) > 0 {
		if env, err = transport.Authorizer(e.ids); err != nil {
			return nil, fmt.Errorf("--envoy-id: %w", err)
		}
	}
	return []xdsserver.Option{xdsserver.WithPeerKind(func(ctx context.Context) (xdsserver.NodeKind, error) {
		return peerKind(ctx, rep, env)
	})}, nil
}

func peerKind(ctx context.Context, rep, env tlsconfig.Authorizer) (xdsserver.NodeKind, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil || p.AuthInfo.AuthType() == "insecure" {
		// --plaintext (loopback only): no identity, the first type decides.
		return xdsserver.NodeUnknown, nil
	}
	id, err := transport.PeerID(ctx)
	if err != nil {
		return xdsserver.NodeUnknown, fmt.Errorf("%s peer: %w", p.AuthInfo.AuthType(), err)
	}
	return kindOf(id, rep, env)
}

// kindOf classifies a proven peer SPIFFE ID. The authorizers match on the
// ID only (transport.Authorizer): the handshake already verified the chain.
func kindOf(id spiffeid.ID, rep, env tlsconfig.Authorizer) (xdsserver.NodeKind, error) {
	isRep := rep(id, nil) == nil
	isEnv := env != nil && env(id, nil) == nil
	switch {
	case isRep && isEnv:
		return xdsserver.NodeUnknown, fmt.Errorf("peer %s matches both --replica-id and --envoy-id", id)
	case isRep:
		return xdsserver.NodeReplica, nil
	case isEnv:
		return xdsserver.NodeEnvoy, nil
	}
	return xdsserver.NodeUnknown, fmt.Errorf("peer %s matches neither --replica-id nor --envoy-id", id)
}

// envoySetter is the part of the xDS server the loader needs.
type envoySetter interface {
	SetListeners(map[string]*listenerv3.Listener) (string, error)
	SetClusters(map[string]*clusterv3.Cluster) (string, error)
}

// envoyLoader loads --envoy-dir into the xDS server and keeps the last
// good set when a reload fails.
type envoyLoader struct {
	dir     string
	xs      envoySetter
	log     *slog.Logger
	reloads *prometheus.CounterVec
	count   *prometheus.GaugeVec

	mu       sync.Mutex
	clusters map[string]*clusterv3.Cluster // last set served
}

func newEnvoyLoader(dir string, xs envoySetter, logger *slog.Logger, reg prometheus.Registerer) (*envoyLoader, error) {
	l := &envoyLoader{dir: dir, xs: xs, log: logger,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "mandate", Subsystem: "cp", Name: "envoy_reloads_total",
			Help: "Loads of --envoy-dir, by result (ok, error: the last good set is kept).",
		}, []string{"result"}),
		count: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "mandate", Subsystem: "cp", Name: "envoy_resources",
			Help: "Envoy resources served from --envoy-dir, by type.",
		}, []string{"type"}),
	}
	for _, c := range []prometheus.Collector{l.reloads, l.count} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("envoy: register metrics: %w", err)
		}
	}
	l.reloads.WithLabelValues("ok")
	l.reloads.WithLabelValues("error")
	return l, nil
}

// load reads, checks and serves the directory. On error nothing changes.
func (l *envoyLoader) load() error {
	r, err := envoyconf.LoadDir(l.dir)
	if err != nil {
		l.reloads.WithLabelValues("error").Inc()
		return err
	}
	ls := make(map[string]*listenerv3.Listener, len(r.Listeners))
	for _, x := range r.Listeners {
		ls[x.GetName()] = x
	}
	cs := make(map[string]*clusterv3.Cluster, len(r.Clusters))
	for _, x := range r.Clusters {
		cs[x.GetName()] = x
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	// Make before break: new clusters first (old ones kept while old
	// listeners may still route to them), then listeners, then the
	// clusters alone.
	union := maps.Clone(l.clusters)
	if union == nil {
		union = map[string]*clusterv3.Cluster{}
	}
	maps.Copy(union, cs)
	if _, err := l.xs.SetClusters(union); err != nil {
		l.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("envoy: serve clusters: %w", err)
	}
	lv, err := l.xs.SetListeners(ls)
	if err != nil {
		l.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("envoy: serve listeners: %w", err)
	}
	cv, err := l.xs.SetClusters(cs)
	if err != nil {
		l.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("envoy: serve clusters: %w", err)
	}
	l.clusters = cs
	l.reloads.WithLabelValues("ok").Inc()
	l.count.WithLabelValues("Listener").Set(float64(len(ls)))
	l.count.WithLabelValues("Cluster").Set(float64(len(cs)))
	l.log.Info("envoy resources loaded", "dir", l.dir, "listeners", len(ls), "clusters", len(cs),
		"listener_version", lv, "cluster_version", cv)
	return nil
}

// watch reloads on SIGHUP and on changes in the directory (debounced)
// until ctx ends. ready is closed once both are being watched.
func (l *envoyLoader) watch(ctx context.Context, debounce time.Duration, ready chan<- struct{}) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("envoy: watch %s: %w", l.dir, err)
	}
	defer w.Close()
	if err := w.Add(l.dir); err != nil {
		return fmt.Errorf("envoy: watch %s: %w", l.dir, err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	close(ready)

	timer := time.NewTimer(debounce)
	timer.Stop()
	reload := func(why string) {
		if err := l.load(); err != nil {
			l.log.Error("envoy resources not reloaded: keeping the last good set", "why", why, "dir", l.dir, "error", err)
		}
	}
	// If the file watcher dies, SIGHUP keeps working: its handler stays
	// registered until ctx ends (an unhandled SIGHUP would kill the
	// process).
	events, errs := w.Events, w.Errors
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-hup:
			reload("SIGHUP")
		case ev, ok := <-events:
			if !ok {
				l.log.Error("envoy dir watcher closed: only SIGHUP reloads now", "dir", l.dir)
				events, errs = nil, nil
				continue
			}
			l.log.Debug("envoy dir changed", "event", ev.String())
			timer.Reset(debounce)
		case err, ok := <-errs:
			if !ok {
				l.log.Error("envoy dir watcher closed: only SIGHUP reloads now", "dir", l.dir)
				events, errs = nil, nil
				continue
			}
			l.log.Warn("envoy dir watch error", "error", err)
			timer.Reset(debounce)
		case <-timer.C:
			reload("file change")
		}
	}
}

// start loads --envoy-dir (refusing to start on an invalid or unsafe set)
// and keeps it up to date in the background until ctx ends. Without
// --envoy-dir it does nothing.
func (e *envoyOptions) start(ctx context.Context, xs envoySetter, logger *slog.Logger, reg prometheus.Registerer) error {
	if e.dir == "" {
		if len(e.ids) > 0 {
			logger.Warn("--envoy-id without --envoy-dir: Envoys may connect but get no listeners or clusters")
		}
		return nil
	}
	if len(e.ids) == 0 {
		logger.Warn("--envoy-dir without --envoy-id: only plaintext (development) Envoys can connect")
	}
	l, err := newEnvoyLoader(e.dir, xs, logger, reg)
	if err != nil {
		return err
	}
	if err := l.load(); err != nil {
		logger.Error("--envoy-dir refused", "dir", e.dir, "error", err)
		return fmt.Errorf("--envoy-dir: %w", err)
	}
	ready := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- l.watch(ctx, e.debounce, ready) }()
	select {
	case <-ready:
	case err := <-errc:
		return err
	}
	go func() {
		if err := <-errc; err != nil {
			logger.Error("envoy dir no longer watched", "error", err)
		}
	}()
	return nil
}
