package replica

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/internal/opshttp"
	"github.com/mandate-dev/mandate/internal/transport"
)

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
