// Package policydir loads a policy directory and reloads it when files
// change: Mandate's standalone mode. An invalid edit keeps the last good
// set in force; the failure is logged and counted.
package policydir

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/policies"
)

// Config configures a Watcher.
type Config struct {
	// Dir is the policy directory. Required.
	Dir string
	// Apply installs a successfully loaded set. Required.
	Apply func(*policies.Set)
	// Debounce coalesces bursts of file events (editors write several);
	// default 100ms.
	Debounce time.Duration
	Logger   *slog.Logger
	// Registerer, when set, receives the reload metrics.
	Registerer prometheus.Registerer
}

// Watcher reloads a policy directory on change.
type Watcher struct {
	cfg      Config
	reloads  *prometheus.CounterVec
	lastOK   prometheus.Gauge
	rules    prometheus.Gauge
	attempts chan struct{}
}

// New validates cfg.
func New(cfg Config) (*Watcher, error) {
	if cfg.Dir == "" {
		return nil, errors.New("policydir: Dir is required")
	}
	if cfg.Apply == nil {
		return nil, errors.New("policydir: Apply is required")
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &Watcher{
		cfg: cfg,
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mandate_authz_policy_reloads_total",
			Help: "Policy directory loads by result (success, failure).",
		}, []string{"result"}),
		lastOK: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mandate_authz_policy_last_reload_success",
			Help: "1 if the last policy directory load succeeded, 0 if it failed and the previous set is still in force.",
		}),
		rules: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mandate_authz_policy_rules",
			Help: "Rules in the policy set in force.",
		}),
		attempts: make(chan struct{}, 1),
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{w.reloads, w.lastOK, w.rules} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("policydir: registering metrics: %w", err)
			}
		}
	}
	return w, nil
}

// Load loads the directory once and applies it on success.
func (w *Watcher) Load() error {
	set, err := policies.LoadDir(w.cfg.Dir)
	if err != nil {
		w.reloads.WithLabelValues("failure").Inc()
		w.lastOK.Set(0)
		return fmt.Errorf("policydir: %w", err)
	}
	w.cfg.Apply(set)
	w.reloads.WithLabelValues("success").Inc()
	w.lastOK.Set(1)
	w.rules.Set(float64(set.Len()))
	w.cfg.Logger.Info("policies loaded", "dir", w.cfg.Dir, "version", set.Version(), "rules", set.Len())
	return nil
}

// Reloaded returns a channel that receives a value after each reload
// attempt triggered by a file change (tests wait on it).
func (w *Watcher) Reloaded() <-chan struct{} { return w.attempts }

// Run watches the directory (and its subdirectories) until ctx is done,
// reloading once the watch is in place (a change made after the first
// Load and before the watch began is seen) and after each burst of
// changes.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policydir: %w", err)
	}
	defer fw.Close()
	if err := addTree(fw, w.cfg.Dir); err != nil {
		return err
	}
	// What changed between the first Load and the watch is in no event:
	// load once more now that every later change is.
	if err := w.Load(); err != nil {
		w.cfg.Logger.Error("policy reload failed; keeping the last good set", "err", err)
	}
	var timer *time.Timer
	var fire <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return errors.New("policydir: watcher closed")
			}
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Stat(ev.Name); err == nil && fi.IsDir() {
					_ = addTree(fw, ev.Name)
				}
			}
			if timer == nil {
				timer = time.NewTimer(w.cfg.Debounce)
			} else {
				timer.Reset(w.cfg.Debounce)
			}
			fire = timer.C
		case err, ok := <-fw.Errors:
			if !ok {
				return errors.New("policydir: watcher closed")
			}
			w.cfg.Logger.Warn("policy directory watch error", "err", err)
		case <-fire:
			fire = nil
			if err := w.Load(); err != nil {
				w.cfg.Logger.Error("policy reload failed; keeping the last good set", "err", err)
			}
			select {
			case w.attempts <- struct{}{}:
			default:
			}
		}
	}
}

func addTree(fw *fsnotify.Watcher, root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("policydir: %w", err)
		}
		if d.IsDir() {
			if err := fw.Add(p); err != nil {
				return fmt.Errorf("policydir: watching %s: %w", p, err)
			}
		}
		return nil
	})
}
