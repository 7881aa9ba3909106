// Command mandate-cp is Mandate's control plane: it stores policies,
// revocations, approvals and keys durably (bbolt under --data-dir, or
// etcd shared by several instances), validates every write, serves them
// to mandate-authz replicas over xDS and tracks which replica ACKed which
// version. Operators use the Admin API (mTLS, or a local unix socket)
// through mandatectl. The command parses its flags into an
// instance.Config and handles signals; cp/instance does the rest.
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

	"github.com/mandate-dev/mandate/cp/drift"
	"github.com/mandate-dev/mandate/cp/instance"
	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/store/etcdstore"
	"github.com/mandate-dev/mandate/internal/cmdutil"
	"github.com/mandate-dev/mandate/internal/schedslice"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmdutil.Main("mandate-cp", os.Args[1:], os.Stdout, os.Stderr, func(args []string) error {
		return run(ctx, args, os.Stderr)
	})
	stop()
	os.Exit(code)
}

// options are the command line: the instance's configuration, and the
// log level.
type options struct {
	cfg        instance.Config
	logLevel   string
	schedSlice time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	c, sc := &o.cfg, &o.cfg.Store
	list := func(l *[]string) *cmdutil.List { return (*cmdutil.List)(l) }
	fs := flag.NewFlagSet("mandate-cp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&c.XDSListen, "xds-listen", "127.0.0.1:18000", "address of the xDS (delta ADS) server replicas subscribe to")
	fs.StringVar(&c.AdminListen, "admin-listen", "127.0.0.1:18001", "address of the Admin gRPC API (mTLS; empty: off)")
	fs.StringVar(&c.AdminSocket, "admin-socket", "", "also serve the Admin API on this unix socket, for local root or this process's user")
	fs.StringVar(&sc.DataDir, "data-dir", "", "directory of the durable store (required unless --etcd-endpoint)")
	fs.StringVar(&c.MetricsAddr, "metrics-addr", "127.0.0.1:9091", "address of /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&c.AddrFile, "addr-file", "", "write the bound addresses as JSON ({\"xds\",\"admin\",\"metrics\",\"socket\"}) to this file once serving")
	fs.StringVar(&c.TrustDomain, "trust-domain", "example.org", "trust domain of the default identities")
	fs.Var(list(&c.Operators), "allowed-caller", "SPIFFE ID pattern of operators allowed to use the Admin API (repeatable; default exactly spiffe://<td>/mandate/operator; a glob only where you write one)")
	fs.Var(list(&c.Operators), "operator-id", "alias of --allowed-caller")
	fs.Var(list(&c.ReplicaIDs), "replica-id", "SPIFFE ID pattern of replicas allowed to subscribe to xDS (repeatable; default spiffe://<td>/mandate/authz)")
	fs.Var(list(&c.AdminPeers), "admin-peer", "extra SPIFFE ID pattern admitted on the admin listener for other services, e.g. orchestrators (repeatable)")
	fs.StringVar(&c.WorkloadAPI, "workload-api", "", "SPIFFE Workload API socket (default: $SPIFFE_ENDPOINT_SOCKET)")
	fs.BoolVar(&c.Plaintext, "plaintext", false, "development only: no mTLS on xDS and admin; refused unless both listen on loopback")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug | info | warn | error")
	fs.BoolVar(&c.Pprof, "pprof", false, "serve /debug/pprof on --metrics-addr")
	fs.DurationVar(&o.schedSlice, "sched-slice", 0, "Linux 6.12+: ask for this scheduler time slice (100µs to 100ms) on every thread, so that a thread woken from fdatasync preempts CPU-bound neighbours sooner (its CPU share is unchanged; 0: the kernel's default)")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace", 5*time.Second, "how long a graceful shutdown waits for calls in flight")
	fs.DurationVar(&c.RevocationRetention, "revocation-retention", plane.DefaultRevocationRetention, "how long a revocation record is kept after it expired before it is removed (0: kept forever)")
	fs.DurationVar(&c.AuditMaxAge, "audit-max-age", plane.DefaultAuditMaxAge, "audit entries older than this are removed (0: no age limit)")
	fs.Uint64Var(&c.AuditMaxEntries, "audit-max-entries", plane.DefaultAuditMaxEntries, "the oldest audit entries past this many are removed (0: no count limit)")
	fs.StringVar(&c.IssuancePolicy, "issuance-policy", "", "IssuancePolicy YAML: who may request which mandates (empty: nobody)")
	fs.DurationVar(&c.KeyRotation, "key-rotation", 24*time.Hour, "how often the mandate signing key is rotated")
	fs.DurationVar(&c.KeyOverlap, "key-overlap", time.Hour, "how long a rotated-out key still verifies (at least --mandate-max-ttl plus skew)")
	fs.DurationVar(&c.MandateMaxTTL, "mandate-max-ttl", 15*time.Minute, "longest mandate lifetime")
	fs.IntVar(&c.DelegationMaxDepth, "delegation-max-depth", 3, "longest delegation chain")
	fs.DurationVar(&c.ApprovalWindow, "approval-window", 5*time.Minute, "default window of a step-up approval")
	fs.StringVar(&c.DriftPolicy, "drift-policy", "", "DriftPolicy YAML (overrides the --drift-* flags)")
	fs.IntVar(&c.DriftThreshold, "drift-threshold", 5, "out-of-intent denials of one subject (or of one task, through verified mandates of it) within --drift-window that trigger --drift-action (0: off)")
	fs.DurationVar(&c.DriftWindow, "drift-window", time.Minute, "sliding window of the drift threshold")
	fs.StringVar(&c.DriftAction, "drift-action", "revoke", "revoke | downgrade")
	fs.BoolVar(&c.DriftCountDeniedByRule, "drift-count-denied-by-rule", true, "denials by an explicit deny rule count as drift too")
	fs.IntVar(&c.DriftMaxActions, "drift-max-actions", drift.DefaultMaxActions, "most drift actions (revocations, downgrades) per minute over every subject and task; past it they are held back and counted in mandate_cp_drift_actions_limited_total")
	fs.Var(list(&c.DriftIntents), "drift-downgrade-intents", "intents a downgraded task keeps (with --drift-action downgrade)")
	// Envoy listeners and clusters (LDS/CDS) next to Mandate's resources.
	fs.StringVar(&c.EnvoyDir, "envoy-dir", "", "directory of Envoy listener and cluster files (envoy/envoyconf format) served over LDS/CDS; checked against Mandate's wiring rules, reloaded on change and on SIGHUP")
	fs.Var(list(&c.EnvoyIDs), "envoy-id", "SPIFFE ID pattern of Envoy proxies allowed to fetch listeners and clusters on the xDS listener (repeatable; they may fetch nothing else)")
	c.EnvoyDebounce = 250 * time.Millisecond
	// The store.
	fs.StringVar(&sc.KEKFile, "kek-file", "", "key-encryption key file: signing keys are stored sealed with its first key (\"<id> <base64 of 32 bytes>\" a line; later lines: older keys still read); required with --etcd-endpoint")
	fs.Var(list(&sc.EtcdEndpoints), "etcd-endpoint", "etcd member URL (repeatable): keep the state in etcd instead of --data-dir; every instance on the same etcd and --etcd-prefix serves xDS and the admin API at once, writes through any of them, and pushes every committed change to its replicas")
	fs.StringVar(&sc.EtcdPrefix, "etcd-prefix", etcdstore.DefaultPrefix, "key prefix of the state in etcd")
	fs.StringVar(&sc.EtcdCA, "etcd-cacert", "", "CA bundle verifying the etcd members (TLS; required unless every endpoint is loopback)")
	fs.StringVar(&sc.EtcdCert, "etcd-cert", "", "client certificate for etcd (mTLS)")
	fs.StringVar(&sc.EtcdKey, "etcd-key", "", "client key for etcd (mTLS)")
	fs.DurationVar(&sc.LeaseTTL, "etcd-lease-ttl", 5*time.Second, "lease of this instance's records in etcd (presence, replica ACKs) and of the leadership of singleton work: they lapse this long after the instance died or lost etcd")
	fs.DurationVar(&sc.EtcdGrace, "etcd-grace", 5*time.Second, "with --etcd-endpoint: once etcd has been out of reach (or without quorum) this long, close every xDS stream and refuse new ones until etcd answers again, so replicas move to a healthy instance; writes fail at once with \"etcd unavailable\" from the first failed probe")
	fs.StringVar(&sc.InstanceID, "instance-id", "", "name of this instance in etcd (replica ACK records, leadership, logs, mandatectl status); default hostname-pid")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	var err error
	switch {
	case fs.NArg() > 0:
		err = fmt.Errorf("unexpected arguments %q", fs.Args())
	case sc.DataDir == "" && len(sc.EtcdEndpoints) == 0:
		err = errors.New("--data-dir (or --etcd-endpoint) is required")
	case c.XDSListen == "":
		err = errors.New("--xds-listen is required")
	case o.schedSlice != 0 && (o.schedSlice < schedslice.Min || o.schedSlice > schedslice.Max):
		err = fmt.Errorf("--sched-slice must be 0 or from %v to %v", schedslice.Min, schedslice.Max)
	}
	return o, err
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
	if o.schedSlice > 0 {
		if n, err := schedslice.Set(o.schedSlice); err != nil {
			logger.Info("scheduler time slice left at the kernel's default", "error", err)
		} else {
			logger.Debug("scheduler time slice set", "slice", o.schedSlice, "threads", n)
		}
	}
	// From here on SIGHUP never kills: the Envoy directory and the
	// issuance policy reload on it; the rest needs a restart.
	hup, stopHup := cmdutil.Hangups()
	defer stopHup()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	in, err := instance.New(ctx, o.cfg, logger, reg)
	if err != nil {
		return err
	}
	reloads, stopReloads := context.WithCancel(ctx)
	defer stopReloads()
	go cmdutil.ForwardHangups(reloads, hup, in.Reload)
	return in.Run(ctx)
}
