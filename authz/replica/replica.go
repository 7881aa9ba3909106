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

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/decisioncache"
	"github.com/mandate-dev/mandate/authz/decisionlog"
	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/authz/policydir"
	"github.com/mandate-dev/mandate/internal/cmdutil"
	"github.com/mandate-dev/mandate/internal/lifecycle"
	"github.com/mandate-dev/mandate/internal/opshttp"
	"github.com/mandate-dev/mandate/internal/transport"
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

// decider builds what the Check server decides with: identity, cache,
// decision log, mandate verifier, limits.
func (r *Replica) decider(ctx context.Context) (authz.Config, error) {
	c := &r.cfg
	var tds []spiffeid.TrustDomain
	for _, name := range c.TrustDomains {
		td, err := identity.ParseTrustDomain(name)
		if err != nil {
			return authz.Config{}, fmt.Errorf("trust domain: %w", err)
		}
		tds = append(tds, td)
	}
	var proxies []spiffeid.ID
	for _, p := range c.TrustedProxies {
		id, err := identity.ParseID(p)
		if err != nil {
			return authz.Config{}, fmt.Errorf("trusted proxy: %w", err)
		}
		proxies = append(proxies, id)
	}
	resolver, err := identity.New(identity.Config{TrustDomains: tds, TrustedProxies: proxies, RequireXFCCBy: c.RequireXFCCBy})
	if err != nil {
		return authz.Config{}, err
	}
	var cache *decisioncache.Cache
	if c.CacheTTL > 0 {
		if cache, err = decisioncache.New(decisioncache.Config{MaxEntries: c.CacheSize, TTL: c.CacheTTL}); err != nil {
			return authz.Config{}, err
		}
		r.opened.Push(cache.Close)
	}
	var dlog authz.DecisionLogger
	if c.DecisionLog != nil {
		// The log outlives ctx: it is closed (and flushed) after the
		// Check server stopped.
		l, err := decisionlog.New(context.WithoutCancel(ctx), decisionlog.Config{
			Out:          slog.New(slog.NewJSONHandler(c.DecisionLog, nil)),
			OnDrop:       r.metrics.LogDropped,
			MCPArguments: c.LogMCPArguments,
			Redact:       c.LogRedact,
		})
		if err != nil {
			return authz.Config{}, err
		}
		r.opened.Push(l.Close)
		dlog = l
	}
	if r.verifier, err = mandate.NewVerifier(mandate.VerifierConfig{Issuer: c.MandateIssuer, Audience: c.MandateAudience}); err != nil {
		return authz.Config{}, err
	}
	if c.MandateKeysFile != "" {
		keys, err := mandate.ReadKeyFile(c.MandateKeysFile)
		if err != nil {
			return authz.Config{}, err
		}
		if err := r.verifier.SetKeys(keys); err != nil {
			return authz.Config{}, err
		}
	}
	codec, err := authz.NewCodec(c.MaxRequestBytes)
	if err != nil {
		return authz.Config{}, err
	}
	staleMode := authz.StaleDenyAll
	if c.StaleMode == StaleSensitive {
		staleMode = authz.StaleDenySensitive
	}
	return authz.Config{
		Identity:  resolver,
		State:     r.state,
		Cache:     cache,
		Log:       dlog,
		Metrics:   r.metrics,
		Mandates:  authz.NewMandates(r.verifier),
		StaleMode: staleMode,
		Logger:    r.log,
		MCPLimits: mcp.Limits{MaxBytes: c.MCPMaxBody, MaxDepth: c.MCPMaxDepth},

		MaxHeaderBytes:         c.MaxHeaderBytes,
		RequirePeerCertificate: c.RequirePeerCertificate,
		Codec:                  codec,
	}, nil
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

// servers builds the Check gRPC server and the ops HTTP server and binds
// their listeners.
func (r *Replica) servers(ctx context.Context, srv *authz.Server, codec *authz.Codec, reg *prometheus.Registry) error {
	c := &r.cfg
	r.hs = health.NewServer()
	r.hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	r.hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	sctx, scancel := r.svidCtx(ctx)
	credOpt, src, err := transport.ServerOption(sctx, c.Listen, transport.Config{
		WorkloadAPI: c.WorkloadAPI, Allowed: c.AllowedCallers, Insecure: c.Plaintext,
	})
	scancel()
	if err != nil {
		return err
	}
	r.opened.Push(func() { _ = src.Close() })
	r.gs = grpc.NewServer(append(authz.ServerOptions(codec, authz.Limits{MaxConcurrentStreams: c.MaxConcurrentStreams}), credOpt)...)
	// Whatever happens, serving stops before the decision log and the
	// cache close (a no-op after a graceful stop).
	r.opened.Push(r.gs.Stop)
	authv3.RegisterAuthorizationServer(r.gs, srv)
	healthpb.RegisterHealthServer(r.gs, r.hs)
	reflection.Register(r.gs)
	if r.lis, err = net.Listen("tcp", c.Listen); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	r.opened.Push(func() { _ = r.lis.Close() })
	if c.MetricsAddr != "" {
		if r.mlis, err = net.Listen("tcp", c.MetricsAddr); err != nil {
			return fmt.Errorf("metrics listen: %w", err)
		}
		r.opened.Push(func() { _ = r.mlis.Close() })
		r.hsrv = &http.Server{Handler: opshttp.Handler(reg, r.ready, c.Pprof), ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout: 10 * time.Second, WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute,
			MaxHeaderBytes: 64 << 10}
		r.opened.Push(func() { _ = r.hsrv.Close() })
	}
	return nil
}

// svidCtx bounds the wait for the first SVID, so that a replica without
// a Workload API (or without a registration entry) fails at startup with
// a reason instead of hanging silently, never serving.
func (r *Replica) svidCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if r.cfg.Plaintext {
		return ctx, func() {}
	}
	r.log.Info("waiting for an X.509 SVID from the Workload API", "timeout", r.cfg.SVIDTimeout)
	return context.WithTimeout(ctx, r.cfg.SVIDTimeout)
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

// ready is the readiness check of /readyz and gRPC health.
func (r *Replica) ready() error {
	if r.state.Load() == nil {
		return errors.New("no policy set loaded yet")
	}
	if r.stale != nil && r.stale.Stale() {
		return errors.New("cut off from the control plane past the staleness budget")
	}
	return nil
}

func (r *Replica) refreshHealth() {
	if r.hs == nil {
		return // still in New: Run refreshes before serving
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if r.ready() == nil {
		st = healthpb.HealthCheckResponse_SERVING
	}
	r.hs.SetServingStatus("", st)
	r.hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, st)
}

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

// watchHealth refreshes readiness every second and logs the replica
// going stale and coming back, until ctx ends.
func (r *Replica) watchHealth(ctx context.Context) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	stale := false // as last logged
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		r.refreshHealth()
		if r.stale == nil {
			continue
		}
		now := r.stale.Stale()
		r.metrics.SetStale(now)
		switch {
		case now && !stale:
			r.log.Warn("cut off from the control plane past the staleness budget: failing closed",
				"stale_budget", r.cfg.StaleBudget, "stale_mode", r.cfg.StaleMode)
		case !now && stale:
			r.log.Info("in touch with the control plane again: deciding normally")
		}
		stale = now
	}
}

// Close releases what New opened, last opened first. Run does it when it
// returns; call Close only for a replica that never runs. It is safe to
// call more than once.
func (r *Replica) Close() { r.opened.Release() }
