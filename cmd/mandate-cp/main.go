// Command mandate-cp is Mandate's control plane: it stores policies,
// revocations, approvals and keys durably (bbolt under --data-dir),
// validates every write, serves them to mandate-authz replicas over xDS
// and tracks which replica ACKed which version. Operators use the Admin
// API (mTLS, or a local unix socket) through mandatectl.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/mandate-dev/mandate/cp/admin"
	"github.com/mandate-dev/mandate/cp/drift"
	"github.com/mandate-dev/mandate/cp/issuer"
	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/internal/cmdutil"
	"github.com/mandate-dev/mandate/internal/grpcrecover"
	"github.com/mandate-dev/mandate/internal/lifecycle"
	"github.com/mandate-dev/mandate/internal/opshttp"
	"github.com/mandate-dev/mandate/internal/transport"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmdutil.Main("mandate-cp", os.Args[1:], os.Stdout, os.Stderr, func(args []string) error {
		return run(ctx, args, os.Stderr)
	})
	stop()
	os.Exit(code)
}

type options struct {
	xdsListen, adminListen, adminSocket, dataDir, metricsAddr, addrFile string
	trustDomain, workloadAPI, logLevel                                  string
	operators, replicaIDs, adminPeers                                   cmdutil.List
	plaintext                                                           bool
	shutdownGrace                                                       time.Duration
	revocationRetention                                                 time.Duration
	auditMaxAge                                                         time.Duration
	auditMaxEntries                                                     uint64

	// Mandates, approvals, drift.
	issuancePolicy, driftPolicy, driftAction  string
	driftIntents                              cmdutil.List
	keyRotation, keyOverlap, maxTTL           time.Duration
	approvalWindow, driftWindow               time.Duration
	maxDepth, driftThreshold, driftMaxActions int
	driftDeniedByRule                         bool
	registerer                                prometheus.Registerer // set by run

	envoy envoyOptions // --envoy-dir, --envoy-id: LDS/CDS for Envoys (envoy.go)
	store storeOptions // --kek-file (store.go)
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("mandate-cp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.xdsListen, "xds-listen", "127.0.0.1:18000", "address of the xDS (delta ADS) server replicas subscribe to")
	fs.StringVar(&o.adminListen, "admin-listen", "127.0.0.1:18001", "address of the Admin gRPC API (mTLS; empty: off)")
	fs.StringVar(&o.adminSocket, "admin-socket", "", "also serve the Admin API on this unix socket, for local root or this process's user")
	fs.StringVar(&o.dataDir, "data-dir", "", "directory of the durable store (required unless --etcd-endpoint)")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:9091", "address of /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&o.addrFile, "addr-file", "", "write the bound addresses as JSON ({\"xds\",\"admin\",\"metrics\",\"socket\"}) to this file once serving")
	fs.StringVar(&o.trustDomain, "trust-domain", "example.org", "trust domain of the default identities")
	fs.Var(&o.operators, "allowed-caller", "SPIFFE ID pattern of operators allowed to use the Admin API (repeatable; default exactly spiffe://<td>/mandate/operator; a glob only where you write one)")
	fs.Var(&o.operators, "operator-id", "alias of --allowed-caller")
	fs.Var(&o.replicaIDs, "replica-id", "SPIFFE ID pattern of replicas allowed to subscribe to xDS (repeatable; default spiffe://<td>/mandate/authz)")
	fs.Var(&o.adminPeers, "admin-peer", "extra SPIFFE ID pattern admitted on the admin listener for other services, e.g. orchestrators (repeatable)")
	fs.StringVar(&o.workloadAPI, "workload-api", "", "SPIFFE Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET)")
	fs.BoolVar(&o.plaintext, "plaintext", false, "development only: no mTLS on xDS and admin; refused unless both listen on loopback")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug | info | warn | error")
	fs.DurationVar(&o.shutdownGrace, "shutdown-grace", 5*time.Second, "how long a graceful shutdown waits for calls in flight")
	fs.DurationVar(&o.revocationRetention, "revocation-retention", plane.DefaultRevocationRetention, "how long a revocation record is kept after it expired before it is removed (0: kept forever)")
	fs.DurationVar(&o.auditMaxAge, "audit-max-age", plane.DefaultAuditMaxAge, "audit entries older than this are removed (0: no age limit)")
	fs.Uint64Var(&o.auditMaxEntries, "audit-max-entries", plane.DefaultAuditMaxEntries, "the oldest audit entries past this many are removed (0: no count limit)")
	fs.StringVar(&o.issuancePolicy, "issuance-policy", "", "IssuancePolicy YAML: who may request which mandates (empty: nobody)")
	fs.DurationVar(&o.keyRotation, "key-rotation", 24*time.Hour, "how often the mandate signing key is rotated")
	fs.DurationVar(&o.keyOverlap, "key-overlap", time.Hour, "how long a rotated-out key still verifies (at least --mandate-max-ttl plus skew)")
	fs.DurationVar(&o.maxTTL, "mandate-max-ttl", 15*time.Minute, "longest mandate lifetime")
	fs.IntVar(&o.maxDepth, "delegation-max-depth", 3, "longest delegation chain")
	fs.DurationVar(&o.approvalWindow, "approval-window", 5*time.Minute, "default window of a step-up approval")
	fs.StringVar(&o.driftPolicy, "drift-policy", "", "DriftPolicy YAML (overrides the --drift-* flags)")
	fs.IntVar(&o.driftThreshold, "drift-threshold", 5, "out-of-intent denials of one subject (or of one task, through verified mandates of it) within --drift-window that trigger --drift-action (0: off)")
	fs.DurationVar(&o.driftWindow, "drift-window", time.Minute, "sliding window of the drift threshold")
	fs.StringVar(&o.driftAction, "drift-action", "revoke", "revoke | downgrade")
	fs.BoolVar(&o.driftDeniedByRule, "drift-count-denied-by-rule", true, "denials by an explicit deny rule count as drift too")
	fs.IntVar(&o.driftMaxActions, "drift-max-actions", drift.DefaultMaxActions, "most drift actions (revocations, downgrades) per minute over every subject and task; past it they are held back and counted in mandate_cp_drift_actions_limited_total")
	fs.Var(&o.driftIntents, "drift-downgrade-intents", "intents a downgraded task keeps (with --drift-action downgrade)")
	o.envoy.register(fs)
	o.store.register(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.dataDir == "" && len(o.store.etcd) == 0 {
		return nil, errors.New("--data-dir (or --etcd-endpoint) is required")
	}
	if o.xdsListen == "" {
		return nil, errors.New("--xds-listen is required")
	}
	if len(o.operators) == 0 {
		o.operators = cmdutil.List{admin.DefaultOperator(o.trustDomain)}
	}
	if len(o.replicaIDs) == 0 {
		o.replicaIDs = cmdutil.List{"spiffe://" + o.trustDomain + "/mandate/authz"}
	}
	return o, nil
}

func run(ctx context.Context, args []string, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return cmdutil.UsageError(err)
	}
	level, err := cmdutil.ParseLevel(o.logLevel)
	if err != nil {
		return err
	}
	logger := cmdutil.NewLogger(stderr, level)
	// From here on SIGHUP never kills: the Envoy directory (envoy.go) and
	// the issuance policy reload on it; the rest needs a restart.
	hup, stopHup := cmdutil.Hangups()
	defer stopHup()
	files, err := loadConfigFiles(o)
	if err != nil {
		return err
	}
	var reloadable atomic.Pointer[issuer.Service]
	go func(ctx context.Context) {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if o.envoy.dir != "" {
					logger.Info("SIGHUP: reloading the Envoy directory", "dir", o.envoy.dir)
				}
				if is := reloadable.Load(); is != nil && o.issuancePolicy != "" {
					reloadIssuance(o.issuancePolicy, is, logger)
				}
				if o.envoy.dir == "" && o.issuancePolicy == "" {
					logger.Info("SIGHUP: nothing to reload (no --envoy-dir or --issuance-policy; other settings need a restart)")
				}
			}
		}
	}(ctx)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	o.registerer = reg

	st, be, err := openStore(ctx, o.dataDir, o.store, logger)
	if err != nil {
		return err
	}
	defer func() {
		if err := st.Close(); err != nil {
			logger.Error("closing the store", "error", err)
		}
	}()
	xopts, err := plane.ServerOptions(ctx, st)
	if err != nil {
		return err
	}
	eopts, err := o.envoy.serverOptions(o.replicaIDs)
	if err != nil {
		return err
	}
	xs, err := xdsserver.New(logger, slices.Concat(xopts, eopts, []xdsserver.Option{xdsserver.WithRegisterer(reg)})...)
	if err != nil {
		return err
	}
	defer xs.Close()
	view, stopFleet, err := fleetView(ctx, o.store, be, xs, logger)
	if err != nil {
		return err
	}
	defer stopFleet()
	pl, err := plane.New(ctx, st, xs, logger, plane.WithRegisterer(reg), plane.WithFleet(view), plane.WithRevocationRetention(o.revocationRetention),
		plane.WithAuditRetention(store.AuditRetention{MaxAge: o.auditMaxAge, MaxEntries: o.auditMaxEntries}))
	if err != nil {
		return err
	}
	defer pl.Close()
	// Every long-lived part runs in one group: the first to fail stops
	// the process; on shutdown they stop in the order they started (also
	// when run returns early: nothing outlives it).
	gctx, endGroup := context.WithCancel(ctx)
	grp := lifecycle.New(gctx)
	defer func() { endGroup(); _ = grp.Wait() }()
	if be != nil {
		// Losing etcd: writes fail at once (the backend's probe); after
		// --etcd-grace the xDS streams close so replicas move on.
		grp.Go("etcd guard", func(ctx context.Context) error {
			guardEtcd(ctx, be, xs, o.store.etcdGrace, logger)
			return nil
		})
	}
	// Envoy listeners and clusters go through the plane, which records
	// when each version was committed (the lag `mandatectl status` shows).
	if err := o.envoy.start(ctx, pl, logger, reg); err != nil {
		return err
	}

	addrs := map[string]string{}
	graceful := func(g *grpc.Server) func() {
		return func() {
			stopped := make(chan struct{})
			go func() { g.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(o.shutdownGrace):
				g.Stop()
			}
		}
	}

	// xDS: replicas, and Envoys (--envoy-id) for listeners and clusters.
	xcred, xsrc, err := transport.ServerOption(ctx, o.xdsListen, transport.Config{
		WorkloadAPI: o.workloadAPI, Allowed: o.envoy.allowed(o.replicaIDs), Insecure: o.plaintext,
	})
	if err != nil {
		return fmt.Errorf("xds: %w", err)
	}
	defer xsrc.Close()
	rec, err := grpcrecover.New(logger, reg)
	if err != nil {
		return err
	}
	xg := grpc.NewServer(append(xdsserver.TransportOptions(), xcred, grpc.ChainUnaryInterceptor(rec.Unary()), grpc.ChainStreamInterceptor(rec.Stream()),
		grpc.MaxConcurrentStreams(1000),
		// No response above what a replica accepts (split deltas keep
		// under it); a reconnecting replica's request lists what it holds.
		grpc.MaxSendMsgSize(mandatev1.MaxResponseBytes), grpc.MaxRecvMsgSize(mandatev1.MaxRequestBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}))...)
	xs.Register(xg)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(xg, hs)
	auth, err := admin.NewAuth(admin.AuthConfig{Operators: o.operators, AllowPlaintext: o.plaintext,
		UID: os.Getuid(), Registerer: reg})
	if err != nil {
		return err
	}
	svc, err := admin.New(pl, logger)
	if err != nil {
		return err
	}
	services, err := mandateServices(ctx, o, files, pl, st, auth, logger)
	if err != nil {
		return err
	}
	reloadable.Store(services.issuer)
	// The singletons (key rotation, sweeps, drift counting on etcd) run
	// on the fleet's elected leader: always this instance with bbolt.
	sg, err := singletons(o.store, be, logger)
	if err != nil {
		return err
	}
	grp.Go("singletons", func(ctx context.Context) error {
		sg.Run(ctx, append(services.singletons, pl.RunSweeper, func(ctx context.Context) { sweepStore(ctx, st, logger) })...)
		return nil
	})
	// Replicas report drift and step-up requests over the xDS connection
	// they already hold.
	services.replicas.Register(xg)
	xlis, err := net.Listen("tcp", o.xdsListen)
	if err != nil {
		return fmt.Errorf("xds listen: %w", err)
	}
	// Streams to replicas are long-lived: end them first, then drain.
	grp.Serve("xds", func() error { return xg.Serve(xlis) }, func() { hs.Shutdown(); xs.Close(); graceful(xg)() })
	addrs["xds"] = xlis.Addr().String()

	register := func(g *grpc.Server) {
		mandatev1.RegisterAdminServer(g, svc)
		healthpb.RegisterHealthServer(g, hs)
		reflection.Register(g)
		services.register(g)
	}

	if o.adminListen != "" {
		allowed := slices.Concat(o.operators, o.replicaIDs, o.adminPeers)
		acred, asrc, err := transport.ServerOption(ctx, o.adminListen, transport.Config{
			WorkloadAPI: o.workloadAPI, Allowed: allowed, Insecure: o.plaintext,
		})
		if err != nil {
			return fmt.Errorf("admin: %w", err)
		}
		defer asrc.Close()
		ag := grpc.NewServer(acred, grpc.ChainUnaryInterceptor(rec.Unary(), auth.Unary()), grpc.MaxRecvMsgSize(16<<20))
		register(ag)
		alis, err := net.Listen("tcp", o.adminListen)
		if err != nil {
			return fmt.Errorf("admin listen: %w", err)
		}
		grp.Serve("admin", func() error { return ag.Serve(alis) }, graceful(ag))
		addrs["admin"] = alis.Addr().String()
	}
	if o.adminSocket != "" {
		slis, err := listenUnix(o.adminSocket)
		if err != nil {
			return err
		}
		sg := grpc.NewServer(grpc.Creds(admin.UnixCredentials{}), grpc.ChainUnaryInterceptor(rec.Unary(), auth.Unary()),
			grpc.MaxRecvMsgSize(16<<20))
		register(sg)
		grp.Serve("admin socket", func() error { return sg.Serve(slis) }, func() { graceful(sg)(); _ = os.Remove(o.adminSocket) })
		addrs["socket"] = o.adminSocket
	}

	if o.metricsAddr != "" {
		mlis, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listen: %w", err)
		}
		ready := func() error {
			if reason := xs.Suspended(); reason != "" {
				return errors.New(reason)
			}
			return nil
		}
		hsrv := &http.Server{Handler: opshttp.Handler(reg, ready, false), ReadHeaderTimeout: 5 * time.Second}
		grp.Serve("metrics", func() error { return hsrv.Serve(mlis) }, func() {
			sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			_ = hsrv.Shutdown(sctx)
			c()
		})
		addrs["metrics"] = mlis.Addr().String()
	}
	if o.addrFile != "" {
		if err := cmdutil.WriteAddrFile(o.addrFile, addrs); err != nil {
			return err
		}
	}
	logger.Info("mandate-cp serving", "addrs", addrs, "mtls", !o.plaintext, "data_dir", o.dataDir,
		"operators", []string(o.operators), "replicas", []string(o.replicaIDs))

	go func() {
		<-grp.Context().Done()
		logger.Info("shutting down")
	}()
	if err := grp.Wait(); err != nil {
		logger.Error("server failed", "error", err)
		return err
	}
	return nil
}

// listenUnix listens on path, replacing a stale socket left by a crash,
// and makes it reachable only by this user (root bypasses the mode).
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("--admin-socket %s exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("--admin-socket %s is in use by another process", path)
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
