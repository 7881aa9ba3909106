// Package envoydir serves a directory of Envoy listener and cluster
// files (envoy/envoyconf format) over mandate-cp's xDS server: each set
// is checked against Mandate's wiring rules before it is served, a set
// that fails keeps the last good one, and the directory is reloaded on
// change (debounced) and on demand (SIGHUP).
package envoydir

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/envoy/envoyconf"
)

// Setter is the part of the xDS server (or the plane in front of it) the
// loader serves through.
type Setter interface {
	SetListeners(map[string]*listenerv3.Listener) (string, error)
	SetClusters(map[string]*clusterv3.Cluster) (string, error)
}

// Loader loads one directory into a Setter and keeps the last good set
// when a reload fails.
type Loader struct {
	dir     string
	xs      Setter
	log     *slog.Logger
	reloads *prometheus.CounterVec
	count   *prometheus.GaugeVec

	mu       sync.Mutex
	clusters map[string]*clusterv3.Cluster // last set served
}

// New returns a loader of dir into xs; it registers its metrics with reg.
func New(dir string, xs Setter, logger *slog.Logger, reg prometheus.Registerer) (*Loader, error) {
	if dir == "" || xs == nil || logger == nil || reg == nil {
		return nil, errors.New("envoydir: directory, setter, logger and registerer are required")
	}
	l := &Loader{dir: dir, xs: xs, log: logger,
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
			return nil, fmt.Errorf("envoydir: register metrics: %w", err)
		}
	}
	l.reloads.WithLabelValues("ok")
	l.reloads.WithLabelValues("error")
	return l, nil
}

// Load reads, checks and serves the directory. A set that fails to load
// or check changes nothing; one the Setter refuses after its new clusters
// were added (make before break) leaves those clusters served beside the
// last good set until the next successful Load removes them.
func (l *Loader) Load() error {
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
		return fmt.Errorf("envoydir: serve clusters: %w", err)
	}
	lv, err := l.xs.SetListeners(ls)
	if err != nil {
		l.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("envoydir: serve listeners: %w", err)
	}
	cv, err := l.xs.SetClusters(cs)
	if err != nil {
		l.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("envoydir: serve clusters: %w", err)
	}
	l.clusters = cs
	l.reloads.WithLabelValues("ok").Inc()
	l.count.WithLabelValues("Listener").Set(float64(len(ls)))
	l.count.WithLabelValues("Cluster").Set(float64(len(cs)))
	l.log.Info("envoy resources loaded", "dir", l.dir, "listeners", len(ls), "clusters", len(cs),
		"listener_version", lv, "cluster_version", cv)
	return nil
}

// Reload loads the directory again, logging (with why) a set refused:
// the last good set stays. Safe to call at any time.
func (l *Loader) Reload(why string) {
	if err := l.Load(); err != nil {
		l.log.Error("envoy resources not reloaded: keeping the last good set", "why", why, "dir", l.dir, "error", err)
	}
}

// Watch reloads on changes in the directory, debounced, until ctx ends.
// ready, when not nil, is closed once the directory is watched. It
// returns an error only when the directory cannot be watched at all; a
// watcher that dies later is logged and Reload alone serves changes.
func (l *Loader) Watch(ctx context.Context, debounce time.Duration, ready chan<- struct{}) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("envoydir: watch %s: %w", l.dir, err)
	}
	defer w.Close()
	if err := w.Add(l.dir); err != nil {
		return fmt.Errorf("envoydir: watch %s: %w", l.dir, err)
	}
	if ready != nil {
		close(ready)
	}
	timer := time.NewTimer(debounce)
	timer.Stop()
	events, errs := w.Events, w.Errors
	for {
		select {
		case <-ctx.Done():
			return nil
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
			l.Reload("file change")
		}
	}
}
