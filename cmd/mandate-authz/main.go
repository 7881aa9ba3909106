// Command mandate-authz is Mandate's decision point: an Envoy ext_authz v3
// gRPC server. It runs standalone on a policy directory, or fed by
// mandate-cp over delta ADS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/attrs"
	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/authz/replica"
	"github.com/mandate-dev/mandate/internal/cmdutil"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmdutil.Main("mandate-authz", os.Args[1:], os.Stdout, os.Stderr, func(args []string) error {
		return run(ctx, args, os.Stdout, os.Stderr)
	})
	stop()
	os.Exit(code)
}

// options are the command line: the replica's configuration, and what
// the command itself handles.
type options struct {
	cfg                   replica.Config
	decisionLog, logLevel string
	maxStreams            uint
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	c := &o.cfg
	list := func(l *[]string) *cmdutil.List { return (*cmdutil.List)(l) }
	fs := flag.NewFlagSet("mandate-authz", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.Listen, "listen", "127.0.0.1:9191", "address of the ext_authz gRPC server")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "127.0.0.1:9090", "address of /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&c.PolicyDir, "policy-dir", "", "standalone mode: load and watch this policy directory (neither this nor --xds-server: the embedded example policies)")
	fs.Var(list(&c.XDSServers), "xds-server", "control plane mode: mandate-cp's xDS address; several instances (on one etcd) as a comma-separated list or repeated: one stream at a time, moving to the next address when the stream breaks or the instance refuses it, resuming without a full resend")
	fs.StringVar(&c.NodeID, "node-id", "", "xDS node id (default: hostname-pid)")
	fs.Var(list(&c.ControlPlaneIDs), "cp-id", "SPIFFE ID pattern of the control plane to accept (repeatable; default spiffe://<trust-domain>/mandate/cp)")
	fs.StringVar(&c.WorkloadAPI, "workload-api", "", "SPIFFE Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET)")
	fs.DurationVar(&c.SVIDTimeout, "svid-timeout", time.Minute, "with mTLS: how long startup waits for an X.509 SVID from the Workload API before failing")
	fs.Var(list(&c.TrustDomains), "trust-domain", "trust domain callers may belong to (repeatable; default example.org)")
	fs.Var(list(&c.AllowedCallers), "allowed-caller", "SPIFFE ID pattern allowed to call Check over mTLS, e.g. the Envoy sidecars (repeatable)")
	fs.Var(list(&c.TrustedProxies), "trusted-proxy", "SPIFFE ID of a proxy whose x-forwarded-client-cert is believed (repeatable)")
	fs.BoolVar(&c.Plaintext, "plaintext", false, "development only: serve without mTLS; refused unless --listen is a loopback address")
	fs.DurationVar(&c.CacheTTL, "cache-ttl", 2*time.Second, "how long a decision is cached (0: no cache)")
	fs.Int64Var(&c.CacheSize, "cache-size", 100_000, "decisions kept in the cache")
	fs.IntVar(&c.MaxRules, "max-rules", 100_000, "largest policy set (in rules) this replica accepts; a bigger push is NACKed and the last good set kept")
	fs.DurationVar(&c.StaleBudget, "stale-budget", 30*time.Second, "control plane mode: fail closed after this long without the control plane")
	fs.StringVar(&c.StaleMode, "stale-mode", "all", "what a stale replica denies: all | sensitive (routes labelled sensitivity=high)")
	fs.StringVar(&o.decisionLog, "decision-log", "stdout", "decision log destination: stdout | stderr | off | a file path")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug | info | warn | error")
	fs.IntVar(&c.MCPMaxBody, "mcp-max-body", mcp.DefaultMaxBytes, "largest MCP request body read on routes labelled protocol: mcp (bytes; larger: denied mcp_too_large)")
	fs.IntVar(&c.MCPMaxDepth, "mcp-max-depth", mcp.DefaultMaxDepth, "deepest JSON nesting of an MCP request (deeper: denied mcp_too_deep)")
	fs.BoolVar(&c.LogMCPArguments, "log-mcp-arguments", false, "write MCP tool arguments in decision records (default: only their names and SHA-256)")
	fs.Var(list(&c.LogRedact), "log-redact", "with --log-mcp-arguments: argument member name whose values are written as [redacted], at any depth (repeatable)")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", attrs.DefaultMaxHeaderBytes, "largest total of header names and values of one request (bytes; larger: denied headers_too_large)")
	fs.IntVar(&c.MaxRequestBytes, "max-request-bytes", authz.DefaultMaxRequestBytes, "largest CheckRequest decided (bytes; larger or undecodable: denied bad_request, RPC OK)")
	fs.UintVar(&o.maxStreams, "max-concurrent-streams", 1024, "concurrent Check streams per HTTP/2 connection")
	fs.BoolVar(&c.RequirePeerCertificate, "require-peer-certificate", false, "deny requests whose CheckRequest carries no source.certificate (Envoy's include_peer_certificate); a present one is always checked")
	fs.BoolVar(&c.RequireXFCCBy, "require-xfcc-by", false, "with --trusted-proxy: the last x-forwarded-client-cert element's By= must be the trusted proxy's own SPIFFE ID")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve /debug/pprof on the metrics address")
	fs.StringVar(&c.AddrFile, "addr-file", "", "write the bound addresses as JSON to this file once serving (for --listen 127.0.0.1:0)")
	fs.StringVar(&c.MandateIssuer, "mandate-issuer", "", "issuer of mandates to accept (default spiffe://<first trust domain>/mandate/cp)")
	fs.StringVar(&c.MandateAudience, "mandate-audience", "mandate", "audience mandates must name")
	fs.StringVar(&c.MandateKeysFile, "mandate-keys", "", "standalone mode: JSON file of mandate verification keys [{\"kid\":..., \"public_key\": base64 Ed25519}]")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if len(c.TrustDomains) == 0 {
		c.TrustDomains = []string{"example.org"}
	}
	c.MaxConcurrentStreams = uint32(o.maxStreams)
	var err error
	switch {
	case fs.NArg() > 0:
		err = fmt.Errorf("unexpected arguments %q", fs.Args())
	case c.PolicyDir != "" && len(c.XDSServers) > 0:
		err = errors.New("at most one of --policy-dir (standalone) and --xds-server (control plane)")
	case c.StaleMode != "all" && c.StaleMode != "sensitive":
		err = fmt.Errorf("--stale-mode must be all or sensitive, not %q", c.StaleMode)
	case c.MandateKeysFile != "" && len(c.XDSServers) > 0:
		err = errors.New("--mandate-keys is for standalone mode; with --xds-server keys come from the control plane")
	case c.MCPMaxBody <= 0 || c.MCPMaxDepth <= 0:
		err = errors.New("--mcp-max-body and --mcp-max-depth must be positive")
	case c.MaxHeaderBytes <= 0 || c.MaxRequestBytes <= 0 || o.maxStreams == 0 || o.maxStreams > 1<<31:
		err = errors.New("--max-header-bytes, --max-request-bytes and --max-concurrent-streams must be positive")
	case c.RequireXFCCBy && len(c.TrustedProxies) == 0:
		err = errors.New("--require-xfcc-by needs a --trusted-proxy")
	case c.SVIDTimeout <= 0:
		err = errors.New("--svid-timeout must be positive")
	case !c.Plaintext && len(c.AllowedCallers) == 0:
		err = errors.New("--allowed-caller is required with mTLS (or use --plaintext on loopback for development)")
	}
	return o, err
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
	// From here on SIGHUP never kills: it reloads what the replica can
	// (the policy directory in standalone mode) and is logged otherwise.
	hup, stopHup := cmdutil.Hangups()
	defer stopHup()
	if o.decisionLog != "off" {
		w, closeLog, err := openLog(o.decisionLog, stdout, stderr)
		if err != nil {
			return err
		}
		defer closeLog()
		o.cfg.DecisionLog = w
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	r, err := replica.New(ctx, o.cfg, logger, reg)
	if err != nil {
		return err
	}
	reloads, stopReloads := context.WithCancel(ctx)
	defer stopReloads()
	go cmdutil.ForwardHangups(reloads, hup, r.Reload)
	return r.Run(ctx)
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
