// Command mandate-authz is Mandate's decision point: an Envoy ext_authz v3
// gRPC server. It runs standalone on a policy directory, or fed by
// mandate-cp over delta ADS.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/attrs"
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

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmdutil.Main("mandate-authz", os.Args[1:], os.Stdout, os.Stderr, func(args []string) error {
		return run(ctx, args, os.Stdout, os.Stderr)
	})
	stop()
	os.Exit(code)
}

type options struct {
	listen, metricsAddr, policyDir, workloadAPI, nodeID   string
	xdsServers                                            cmdutil.List
	addrFile, mandateIssuer, mandateAudience, mandateKeys string
	trustDomains, allowedCallers, trustedProxies, cpIDs   cmdutil.List
	plaintext, pprof                                      bool
	cacheTTL, staleBudget, svidTimeout                    time.Duration
	cacheSize                                             int64
	maxRules                                              int
	staleMode, decisionLog, logLevel                      string
	mcpMaxBody, mcpMaxDepth                               int
	logMCPArguments                                       bool
	logRedact                                             cmdutil.List
	maxHeaderBytes, maxRequestBytes                       int
	maxStreams                                            uint
	requirePeerCert, requireXFCCBy                        bool
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("mandate-authz", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:9191", "address of the ext_authz gRPC server")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:9090", "address of /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&o.policyDir, "policy-dir", "", "standalone mode: load and watch this policy directory (neither this nor --xds-server: the embedded example policies)")
	fs.Var(&o.xdsServers, "xds-server", "control plane mode: mandate-cp's xDS address; several instances (on one etcd) as a comma-separated list or repeated: one stream at a time, moving to the next address when the stream breaks or the instance refuses it, resuming without a full resend")
	fs.StringVar(&o.nodeID, "node-id", "", "xDS node id (default: hostname-pid)")
	fs.Var(&o.cpIDs, "cp-id", "SPIFFE ID pattern of the control plane to accept (repeatable; default spiffe://<trust-domain>/mandate/cp)")
	fs.StringVar(&o.workloadAPI, "workload-api", "", "SPIFFE Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET)")
	fs.DurationVar(&o.svidTimeout, "svid-timeout", time.Minute, "with mTLS: how long startup waits for an X.509 SVID from the Workload API before failing")
	fs.Var(&o.trustDomains, "trust-domain", "trust domain callers may belong to (repeatable; default example.org)")
	fs.Var(&o.allowedCallers, "allowed-caller", "SPIFFE ID pattern allowed to call Check over mTLS, e.g. the Envoy sidecars (repeatable)")
	fs.Var(&o.trustedProxies, "trusted-proxy", "SPIFFE ID of a proxy whose x-forwarded-client-cert is believed (repeatable)")
	fs.BoolVar(&o.plaintext, "plaintext", false, "development only: serve without mTLS; refused unless --listen is a loopback address")
	fs.DurationVar(&o.cacheTTL, "cache-ttl", 2*time.Second, "how long a decision is cached (0: no cache)")
	fs.Int64Var(&o.cacheSize, "cache-size", 100_000, "decisions kept in the cache")
	fs.IntVar(&o.maxRules, "max-rules", 100_000, "largest policy set (in rules) this replica accepts; a bigger push is NACKed and the last good set kept")
	fs.DurationVar(&o.staleBudget, "stale-budget", 30*time.Second, "control plane mode: fail closed after this long without the control plane")
	fs.StringVar(&o.staleMode, "stale-mode", "all", "what a stale replica denies: all | sensitive (routes labelled sensitivity=high)")
	fs.StringVar(&o.decisionLog, "decision-log", "stdout", "decision log destination: stdout | stderr | off | a file path")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug | info | warn | error")
	fs.IntVar(&o.mcpMaxBody, "mcp-max-body", mcp.DefaultMaxBytes, "largest MCP request body read on routes labelled protocol: mcp (bytes; larger: denied mcp_too_large)")
	fs.IntVar(&o.mcpMaxDepth, "mcp-max-depth", mcp.DefaultMaxDepth, "deepest JSON nesting of an MCP request (deeper: denied mcp_too_deep)")
	fs.BoolVar(&o.logMCPArguments, "log-mcp-arguments", false, "write MCP tool arguments in decision records (default: only their names and SHA-256)")
	fs.Var(&o.logRedact, "log-redact", "with --log-mcp-arguments: argument member name whose values are written as [redacted], at any depth (repeatable)")
	fs.IntVar(&o.maxHeaderBytes, "max-header-bytes", attrs.DefaultMaxHeaderBytes, "largest total of header names and values of one request (bytes; larger: denied headers_too_large)")
	fs.IntVar(&o.maxRequestBytes, "max-request-bytes", authz.DefaultMaxRequestBytes, "largest CheckRequest decided (bytes; larger or undecodable: denied bad_request, RPC OK)")
	fs.UintVar(&o.maxStreams, "max-concurrent-streams", 1024, "concurrent Check streams per HTTP/2 connection")
	fs.BoolVar(&o.requirePeerCert, "require-peer-certificate", false, "deny requests whose CheckRequest carries no source.certificate (Envoy's include_peer_certificate); a present one is always checked")
	fs.BoolVar(&o.requireXFCCBy, "require-xfcc-by", false, "with --trusted-proxy: the last x-forwarded-client-cert element's By= must be the trusted proxy's own SPIFFE ID")
	fs.BoolVar(&o.pprof, "pprof", false, "serve /debug/pprof on the metrics address")
	fs.StringVar(&o.addrFile, "addr-file", "", "write the bound addresses as JSON to this file once serving (for --listen 127.0.0.1:0)")
	fs.StringVar(&o.mandateIssuer, "mandate-issuer", "", "issuer of mandates to accept (default spiffe://<first trust domain>/mandate/cp)")
	fs.StringVar(&o.mandateAudience, "mandate-audience", "mandate", "audience mandates must name")
	fs.StringVar(&o.mandateKeys, "mandate-keys", "", "standalone mode: JSON file of mandate verification keys [{\"kid\":..., \"public_key\": base64 Ed25519}]")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.policyDir != "" && len(o.xdsServers) > 0 {
		return nil, errors.New("at most one of --policy-dir (standalone) and --xds-server (control plane)")
	}
	if len(o.trustDomains) == 0 {
		o.trustDomains = cmdutil.List{"example.org"}
	}
	if o.staleMode != "all" && o.staleMode != "sensitive" {
		return nil, fmt.Errorf("--stale-mode must be all or sensitive, not %q", o.staleMode)
	}
	if o.mandateIssuer == "" {
		o.mandateIssuer = "spiffe://" + o.trustDomains[0] + "/mandate/cp"
	}
	if o.mandateKeys != "" && len(o.xdsServers) > 0 {
		return nil, errors.New("--mandate-keys is for standalone mode; with --xds-server keys come from the control plane")
	}
	if o.mcpMaxBody <= 0 || o.mcpMaxDepth <= 0 {
		return nil, errors.New("--mcp-max-body and --mcp-max-depth must be positive")
	}
	if o.maxHeaderBytes <= 0 || o.maxRequestBytes <= 0 || o.maxStreams == 0 || o.maxStreams > 1<<31 {
		return nil, errors.New("--max-header-bytes, --max-request-bytes and --max-concurrent-streams must be positive")
	}
	if o.requireXFCCBy && len(o.trustedProxies) == 0 {
		return nil, errors.New("--require-xfcc-by needs a --trusted-proxy")
	}
	if o.svidTimeout <= 0 {
		return nil, errors.New("--svid-timeout must be positive")
	}
	if !o.plaintext && len(o.allowedCallers) == 0 {
		return nil, errors.New("--allowed-caller is required with mTLS (or use --plaintext on loopback for development)")
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return cmdutil.UsageError(err)
	}
	level, err := cmdutil.ParseLevel(o.logLevel)
	if err != nil {
		return err
	}
	logger := cmdutil.NewLogger(stderr, level)
	// From here on SIGHUP never kills: it reloads the policy directory
	// (standalone mode) and is logged otherwise.
	hup, stopHup := cmdutil.Hangups()
	defer stopHup()
	reload := func() {
		logger.Info("SIGHUP: nothing to reload (policies come from the control plane or are embedded)")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := authz.NewMetrics(reg)
	if err != nil {
		return err
	}

	var tds []spiffeid.TrustDomain
	for _, name := range o.trustDomains {
		td, err := identity.ParseTrustDomain(name)
		if err != nil {
			return fmt.Errorf("--trust-domain: %w", err)
		}
		tds = append(tds, td)
	}
	var proxies []spiffeid.ID
	for _, p := range o.trustedProxies {
		id, err := identity.ParseID(p)
		if err != nil {
			return fmt.Errorf("--trusted-proxy: %w", err)
		}
		proxies = append(proxies, id)
	}
	resolver, err := identity.New(identity.Config{TrustDomains: tds, TrustedProxies: proxies, RequireXFCCBy: o.requireXFCCBy})
	if err != nil {
		return err
	}

	var cache *decisioncache.Cache
	if o.cacheTTL > 0 {
		if cache, err = decisioncache.New(decisioncache.Config{MaxEntries: o.cacheSize, TTL: o.cacheTTL}); err != nil {
			return err
		}
		defer cache.Close()
	}

	var dlog authz.DecisionLogger
	if o.decisionLog != "off" {
		w, closeLog, err := openLog(o.decisionLog, stdout, stderr)
		if err != nil {
			return err
		}
		defer closeLog()
		l, err := decisionlog.New(ctx, decisionlog.Config{
			Out:          slog.New(slog.NewJSONHandler(w, nil)),
			OnDrop:       metrics.LogDropped,
			MCPArguments: o.logMCPArguments,
			Redact:       o.logRedact,
		})
		if err != nil {
			return err
		}
		defer l.Close()
		dlog = l
	}

	verifier, err := mandate.NewVerifier(mandate.VerifierConfig{Issuer: o.mandateIssuer, Audience: o.mandateAudience})
	if err != nil {
		return err
	}
	if o.mandateKeys != "" {
		keys, err := readKeys(o.mandateKeys)
		if err != nil {
			return err
		}
		if err := verifier.SetKeys(keys); err != nil {
			return err
		}
	}

	store := authz.NewStateStore(nil)
	staleMode := authz.StaleDenyAll
	if o.staleMode == "sensitive" {
		staleMode = authz.StaleDenySensitive
	}
	codec, err := authz.NewCodec(o.maxRequestBytes)
	if err != nil {
		return err
	}
	cfg := authz.Config{
		Identity:  resolver,
		State:     store,
		Cache:     cache,
		Log:       dlog,
		Metrics:   metrics,
		Mandates:  authz.NewMandates(verifier),
		StaleMode: staleMode,
		Logger:    logger,
		MCPLimits: mcp.Limits{MaxBytes: o.mcpMaxBody, MaxDepth: o.mcpMaxDepth},

		MaxHeaderBytes:         o.maxHeaderBytes,
		RequirePeerCertificate: o.requirePeerCert,
		Codec:                  codec,
	}

	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	ready := func() error {
		if store.Load() == nil {
			return errors.New("no policy set loaded yet")
		}
		if cfg.Staleness != nil && cfg.Staleness.Stale() {
			return errors.New("cut off from the control plane past the staleness budget")
		}
		return nil
	}
	refreshHealth := func() {
		st := healthpb.HealthCheckResponse_NOT_SERVING
		if ready() == nil {
			st = healthpb.HealthCheckResponse_SERVING
		}
		hs.SetServingStatus("", st)
		hs.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, st)
	}

	// Every long-lived part runs in one group: the first to fail stops
	// the replica; on shutdown the Check server drains first. Nothing
	// outlives run, also when it returns early.
	gctx, endGroup := context.WithCancel(ctx)
	grp := lifecycle.New(gctx)
	defer func() { endGroup(); _ = grp.Wait() }()
	ctx = grp.Context()

	mode := "standalone"
	switch {
	case len(o.xdsServers) == 0 && o.policyDir == "":
		// The embedded default for a first run: the example policies
		// compiled into the binary.
		mode = "embedded-examples"
		set, err := policies.LoadFS(examples.FS)
		if err != nil {
			return err
		}
		store.Update(func(s *authz.State) { s.Policies = set })
		logger.Warn("no --policy-dir or --xds-server: deciding on the embedded example policies (policies/examples)",
			"version", set.Version(), "rules", set.Len())
	case o.policyDir != "":
		w, err := policydir.New(policydir.Config{
			Dir:        o.policyDir,
			Logger:     logger,
			Registerer: reg,
			Apply: func(set *policies.Set) {
				store.Update(func(s *authz.State) { s.Policies = set })
				refreshHealth()
			},
		})
		if err != nil {
			return err
		}
		if err := w.Load(); err != nil {
			return err
		}
		reload = func() {
			logger.Info("SIGHUP: reloading the policy directory", "dir", o.policyDir)
			if err := w.Load(); err != nil {
				logger.Error("policy directory not reloaded: keeping the last good set", "dir", o.policyDir, "error", err)
			}
		}
		grp.Go("policy directory", w.Run)
	default:
		mode = "control-plane"
		if err := startXDS(ctx, o, store, verifier, &cfg, reg, logger, refreshHealth, grp); err != nil {
			return err
		}
	}

	srv, err := authz.NewServer(cfg)
	if err != nil {
		return err
	}
	sctx, scancel := svidCtx(ctx, o, logger)
	credOpt, src, err := transport.ServerOption(sctx, o.listen, transport.Config{
		WorkloadAPI: o.workloadAPI, Allowed: o.allowedCallers, Insecure: o.plaintext,
	})
	scancel()
	if err != nil {
		return err
	}
	defer src.Close()
	gs := grpc.NewServer(append(authz.ServerOptions(codec, authz.Limits{MaxConcurrentStreams: uint32(o.maxStreams)}), credOpt)...)
	// Every return stops serving before the deferred closes of the
	// decision log and cache run (a no-op after GracefulStop).
	defer gs.Stop()
	authv3.RegisterAuthorizationServer(gs, srv)
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)

	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	refreshHealth()
	grp.Serve("check server", func() error { return gs.Serve(lis) }, func() {
		logger.Info("shutting down")
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(5 * time.Second):
			gs.Stop()
		}
	})
	addrs := map[string]string{"grpc": lis.Addr().String()}
	logger.Info("mandate-authz serving", "addr", lis.Addr().String(), "mtls", !o.plaintext,
		"mode", mode)

	var hsrv *http.Server
	if o.metricsAddr != "" {
		mlis, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return fmt.Errorf("metrics listen: %w", err)
		}
		hsrv = &http.Server{Handler: opshttp.Handler(reg, ready, o.pprof), ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout: 10 * time.Second, WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute,
			MaxHeaderBytes: 64 << 10}
		defer hsrv.Close()
		grp.Serve("metrics", func() error { return hsrv.Serve(mlis) }, func() {
			sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			_ = hsrv.Shutdown(sctx)
			c()
		})
		logger.Info("metrics serving", "addr", mlis.Addr().String())
		addrs["metrics"] = mlis.Addr().String()
	}
	if o.addrFile != "" {
		if err := cmdutil.WriteAddrFile(o.addrFile, addrs); err != nil {
			return err
		}
	}

	tick := time.NewTicker(time.Second)
	stale := false // as last logged
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return grp.Wait()
		case <-hup:
			reload()
		case <-tick.C:
			refreshHealth()
			if cfg.Staleness != nil {
				now := cfg.Staleness.Stale()
				metrics.SetStale(now)
				switch {
				case now && !stale:
					logger.Warn("cut off from the control plane past the staleness budget: failing closed",
						"stale_budget", o.staleBudget, "stale_mode", o.staleMode)
				case !now && stale:
					logger.Info("in touch with the control plane again: deciding normally")
				}
				stale = now
			}
		}
	}
}

// svidCtx bounds the wait for the first SVID, so that a replica without
// a Workload API (or without a registration entry) fails at startup with
// a reason instead of hanging silently, never serving.
func svidCtx(ctx context.Context, o *options, logger *slog.Logger) (context.Context, context.CancelFunc) {
	if o.plaintext {
		return ctx, func() {}
	}
	logger.Info("waiting for an X.509 SVID from the Workload API", "timeout", o.svidTimeout)
	return context.WithTimeout(ctx, o.svidTimeout)
}

func openLog(dest string, stdout, stderr io.Writer) (io.Writer, func(), error) {
	switch dest {
	case "stdout":
		return stdout, func() {}, nil
	case "stderr":
		return stderr, func() {}, nil
	}
	f, err := os.OpenFile(dest, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("decision log: %w", err)
	}
	return f, func() { _ = f.Close() }, nil
}

// readKeys reads standalone verification keys.
func readKeys(path string) ([]mandate.Key, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--mandate-keys: %w", err)
	}
	var raw []struct {
		KID       string `json:"kid"`
		PublicKey []byte `json:"public_key"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("--mandate-keys %s: %w", path, err)
	}
	keys := make([]mandate.Key, 0, len(raw))
	for _, k := range raw {
		keys = append(keys, mandate.Key{ID: k.KID, Public: k.PublicKey})
	}
	return keys, nil
}
