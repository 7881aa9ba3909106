// Package replica assembles one mandate-authz replica from a Config: the
// ext_authz Check server, its ops HTTP endpoints, and the source of its
// policies (a watched directory, the control plane over delta ADS, or the
// embedded examples). New builds and checks everything and binds the
// listeners; Run serves until its context ends or a part fails, under one
// lifecycle group, and releases everything New opened.
package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/authz/policydir"
	"github.com/mandate-dev/mandate/internal/cmdutil"
	"github.com/mandate-dev/mandate/internal/lifecycle"
	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/policies/examples"
)

// Replica is an assembled mandate-authz. Build it with New, then call Run
// once; Reload is the only method safe to call while it runs.
type Replica struct {
	cfg     Config
	log     *slog.Logger
	metrics *authz.Metrics
	state   *authz.StateStore
	stale   *staleness // nil without a control plane
	// verifier takes the control plane's verification keys.
	verifier *mandate.Verifier
	mode     string
	reload   func()

	hs        *health.Server
	gs        *grpc.Server
	lis, mlis net.Listener
	hsrv      *http.Server
	parts     []lifecycle.Part
	opened    lifecycle.Stack
	started   atomic.Bool
}

// New builds a replica: it checks cfg, opens the Workload API source,
// loads the first policies (standalone) or dials the control plane,
// and binds the listeners. On error everything it opened is released.
// ctx bounds the startup (the wait for an SVID); reg receives the
// replica's metrics and is what /metrics serves.
func New(ctx context.Context, cfg Config, logger *slog.Logger, reg *prometheus.Registry) (_ *Replica, err error) {
	if logger == nil || reg == nil {
		return nil, errors.New("replica: logger and registry are required")
	}
	r := &Replica{cfg: cfg.clone(), log: logger, state: authz.NewStateStore(nil), reload: func() {
		logger.Info("SIGHUP: nothing to reload (policies come from the control plane or are embedded)")
	}}
	defer func() {
		if err != nil {
			r.Close()
			err = fmt.Errorf("replica: %w", err)
		}
	}()
	if err := r.cfg.validate(); err != nil {
		return nil, err
	}
	if r.metrics, err = authz.NewMetrics(reg); err != nil {
		return nil, err
	}
	acfg, err := r.decider(ctx)
	if err != nil {
		return nil, err
	}
	if err := r.policySource(ctx, &acfg, reg); err != nil {
		return nil, err
	}
	srv, err := authz.NewServer(acfg)
	if err != nil {
		return nil, err
	}
	if err := r.servers(ctx, srv, acfg.Codec, reg); err != nil {
		return nil, err
	}
	return r, nil
}

// policySource loads the first policy set (embedded examples, or the
// policy directory, then watched), or prepares to follow the control
// plane (acfg gains its staleness and reporting hooks).
func (r *Replica) policySource(ctx context.Context, acfg *authz.Config, reg prometheus.Registerer) error {
	c := &r.cfg
	switch {
	case len(c.XDSServers) > 0:
		r.mode = "control-plane"
		return r.followControlPlane(ctx, acfg, reg)
	case c.PolicyDir != "":
		r.mode = "standalone"
		w, err := policydir.New(policydir.Config{
			Dir:        c.PolicyDir,
			Logger:     r.log,
			Registerer: reg,
			Apply: func(set *policies.Set) {
				r.state.Update(func(s *authz.State) { s.Policies = set })
				r.refreshHealth()
			},
		})
		if err != nil {
			return err
		}
		if err := w.Load(); err != nil {
			return err
		}
		r.reload = func() {
			r.log.Info("SIGHUP: reloading the policy directory", "dir", c.PolicyDir)
			if err := w.Load(); err != nil {
				r.log.Error("policy directory not reloaded: keeping the last good set", "dir", c.PolicyDir, "error", err)
			}
		}
		r.parts = append(r.parts, lifecycle.Part{Name: "policy directory", Run: w.Run})
	default:
		// The embedded default for a first run: the example policies
		// compiled into the binary.
		r.mode = "embedded-examples"
		set, err := policies.LoadFS(examples.FS)
		if err != nil {
			return err
		}
		r.state.Update(func(s *authz.State) { s.Policies = set })
		r.log.Warn("no --policy-dir or --xds-server: deciding on the embedded example policies (policies/examples)",
			"version", set.Version(), "rules", set.Len())
	}
	return nil
}

// Addrs returns the bound addresses: "grpc", and "metrics" when served.
func (r *Replica) Addrs() map[string]string {
	addrs := map[string]string{"grpc": r.lis.Addr().String()}
	if r.mlis != nil {
		addrs["metrics"] = r.mlis.Addr().String()
	}
	return addrs
}

// Reload re-reads what can change without a restart: the policy
// directory in standalone mode (a set that fails to load changes
// nothing). Safe to call at any time, from any goroutine.
func (r *Replica) Reload() { r.reload() }

// Run serves until ctx ends (nil) or a part fails (its error): the Check
// server, the ops endpoints, the policy source's loop and the health
// refresh run in one group; the Check server drains first. Everything New
// opened is released when Run returns. Run may be called once.
func (r *Replica) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return errors.New("replica: Run called twice")
	}
	defer r.Close()
	r.refreshHealth()
	if r.cfg.AddrFile != "" {
		if err := cmdutil.WriteAddrFile(r.cfg.AddrFile, r.Addrs()); err != nil {
			return fmt.Errorf("replica: %w", err)
		}
	}
	grp := lifecycle.New(ctx)
	grp.Start(r.parts, nil)
	grp.Serve("check server", func() error { return r.gs.Serve(r.lis) }, func() {
		r.log.Info("shutting down")
		stopped := make(chan struct{})
		go func() { r.gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			r.gs.Stop()
		}
	})
	r.log.Info("mandate-authz serving", "addr", r.lis.Addr().String(), "mtls", !r.cfg.Plaintext, "mode", r.mode)
	if r.hsrv != nil {
		grp.Serve("metrics", func() error { return r.hsrv.Serve(r.mlis) }, func() {
			sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			_ = r.hsrv.Shutdown(sctx)
			c()
		})
		r.log.Info("metrics serving", "addr", r.mlis.Addr().String())
	}
	grp.Go("health", r.watchHealth)
	return grp.Wait()
}

// Close releases what New opened, last opened first. Run does it when it
// returns; call Close only for a replica that never runs. It is safe to
// call more than once.
func (r *Replica) Close() { r.opened.Release() }
