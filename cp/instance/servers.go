package instance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/mandate-dev/mandate/cp/admin"
	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/internal/grpcrecover"
	"github.com/mandate-dev/mandate/internal/lifecycle"
	"github.com/mandate-dev/mandate/internal/opshttp"
	"github.com/mandate-dev/mandate/internal/transport"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// serve builds the gRPC servers (xDS; the Admin API on its listener and
// its socket) with the mandate services, and the ops HTTP server, and
// binds their listeners; Run serves them.
func (in *Instance) serve(ctx context.Context, xs *xdsserver.Server, pl *plane.Plane, st servicesStore, files configFiles,
	reg *prometheus.Registry) (*cpServices, error) {
	c := &in.cfg
	// xDS: replicas, and Envoys (EnvoyIDs) for listeners and clusters.
	xcred, xsrc, err := transport.ServerOption(ctx, c.XDSListen, transport.Config{
		WorkloadAPI: c.WorkloadAPI, Allowed: slices.Concat(c.ReplicaIDs, c.EnvoyIDs), Insecure: c.Plaintext,
	})
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	in.opened.Push(func() { _ = xsrc.Close() })
	rec, err := grpcrecover.New(in.log, reg)
	if err != nil {
		return nil, err
	}
	xg := grpc.NewServer(append(xdsserver.TransportOptions(), xcred, grpc.ChainUnaryInterceptor(rec.Unary()), grpc.ChainStreamInterceptor(rec.Stream()),
		grpc.MaxConcurrentStreams(1000),
		// No response above what a replica accepts (split deltas keep
		// under it); a reconnecting replica's request lists what it holds.
		grpc.MaxSendMsgSize(mandatev1.MaxResponseBytes), grpc.MaxRecvMsgSize(mandatev1.MaxRequestBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}))...)
	in.opened.Push(xg.Stop)
	xs.Register(xg)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(xg, hs)
	auth, err := admin.NewAuth(admin.AuthConfig{Operators: c.Operators, AllowPlaintext: c.Plaintext,
		UID: os.Getuid(), Registerer: reg})
	if err != nil {
		return nil, err
	}
	svc, err := admin.New(pl, in.log)
	if err != nil {
		return nil, err
	}
	services, err := mandateServices(ctx, c, files, pl, st, auth, in.log, reg)
	if err != nil {
		return nil, err
	}
	// Replicas report drift and step-up requests over the xDS connection
	// they already hold.
	services.replicas.Register(xg)
	xlis, err := in.listen("xds", "tcp", c.XDSListen)
	if err != nil {
		return nil, err
	}
	// Streams to replicas are long-lived: end them first, then drain.
	in.addServer("xds", func() error { return xg.Serve(xlis) }, func() { hs.Shutdown(); xs.Close(); in.graceful(xg) })

	register := func(g *grpc.Server) {
		mandatev1.RegisterAdminServer(g, svc)
		healthpb.RegisterHealthServer(g, hs)
		reflection.Register(g)
		services.register(g)
	}
	if c.AdminListen != "" {
		acred, asrc, err := transport.ServerOption(ctx, c.AdminListen, transport.Config{
			WorkloadAPI: c.WorkloadAPI, Allowed: slices.Concat(c.Operators, c.ReplicaIDs, c.AdminPeers), Insecure: c.Plaintext,
		})
		if err != nil {
			return nil, fmt.Errorf("admin: %w", err)
		}
		in.opened.Push(func() { _ = asrc.Close() })
		ag := grpc.NewServer(acred, grpc.ChainUnaryInterceptor(rec.Unary(), auth.Unary()), grpc.MaxRecvMsgSize(16<<20))
		in.opened.Push(ag.Stop)
		register(ag)
		alis, err := in.listen("admin", "tcp", c.AdminListen)
		if err != nil {
			return nil, err
		}
		in.addServer("admin", func() error { return ag.Serve(alis) }, func() { in.graceful(ag) })
	}
	if c.AdminSocket != "" {
		slis, err := listenUnix(c.AdminSocket)
		if err != nil {
			return nil, err
		}
		in.opened.Push(func() { _ = slis.Close(); _ = os.Remove(c.AdminSocket) })
		in.addrs["socket"] = c.AdminSocket
		sg := grpc.NewServer(grpc.Creds(admin.UnixCredentials{}), grpc.ChainUnaryInterceptor(rec.Unary(), auth.Unary()),
			grpc.MaxRecvMsgSize(16<<20))
		in.opened.Push(sg.Stop)
		register(sg)
		in.addServer("admin socket", func() error { return sg.Serve(slis) }, func() { in.graceful(sg) })
	}
	if c.MetricsAddr != "" {
		mlis, err := in.listen("metrics", "tcp", c.MetricsAddr)
		if err != nil {
			return nil, err
		}
		ready := func() error {
			if reason := xs.Suspended(); reason != "" {
				return errors.New(reason)
			}
			return nil
		}
		hsrv := &http.Server{Handler: opshttp.Handler(reg, ready, c.Pprof), ReadHeaderTimeout: 5 * time.Second}
		in.opened.Push(func() { _ = hsrv.Close() })
		in.addServer("metrics", func() error { return hsrv.Serve(mlis) }, func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_ = hsrv.Shutdown(sctx)
			cancel()
		})
	}
	return services, nil
}

// listen binds a listener, released with the instance, under name in
// Addrs.
func (in *Instance) listen(name, network, addr string) (net.Listener, error) {
	lis, err := net.Listen(network, addr)
	if err != nil {
		return nil, fmt.Errorf("%s listen: %w", name, err)
	}
	in.opened.Push(func() { _ = lis.Close() })
	in.addrs[name], in.listeners[name] = lis.Addr().String(), lis
	return lis, nil
}

func (in *Instance) addServer(name string, serve func() error, stop func()) {
	in.servers = append(in.servers, lifecycle.Server{Name: name, Serve: serve, Stop: stop})
}

// graceful stops g, waiting for calls in flight at most ShutdownGrace.
func (in *Instance) graceful(g *grpc.Server) {
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(in.cfg.ShutdownGrace):
		g.Stop()
	}
}

// listenUnix listens on path, replacing a stale socket left by a crash,
// and makes it reachable only by this user (root bypasses the mode).
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("admin socket %s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("admin socket %s is in use by another process", path)
		}
		_ = os.Remove(path)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return lis, nil
}
