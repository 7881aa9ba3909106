package instance

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/mandate-dev/mandate/cp/admin"
)

// Config is everything an instance is built from: plain values, checked
// by New, which keeps its own copy (a caller changing its Config, or the
// slices in it, after New changes nothing).
type Config struct {
	// Listeners. XDSListen is required; AdminListen (mTLS) and
	// AdminSocket (a unix socket for local root or this user) are off
	// when empty, and so is MetricsAddr (/metrics, /healthz, /readyz).
	// Port 0 picks a free port; Addrs tells which.
	XDSListen, AdminListen, AdminSocket, MetricsAddr string
	// Pprof serves /debug/pprof on MetricsAddr too.
	Pprof bool
	// AddrFile, when set, receives the bound addresses as JSON
	// ({"xds","admin","metrics","socket"}) once the instance serves.
	AddrFile string

	// Identities. TrustDomain names the defaults: the operator
	// (admin.DefaultOperator), the replicas (spiffe://<td>/mandate/authz)
	// and this control plane as mandate issuer (spiffe://<td>/mandate/cp).
	TrustDomain string
	Operators   []string // SPIFFE ID patterns of operators on the Admin API
	ReplicaIDs  []string // of replicas allowed on xDS
	AdminPeers  []string // of other services on the admin listener (orchestrators)
	EnvoyIDs    []string // of Envoys allowed to fetch listeners and clusters on xDS
	// Transport: mTLS with an X.509 SVID from the Workload API, or
	// Plaintext, on loopback only.
	WorkloadAPI string
	Plaintext   bool

	// EnvoyDir, when set, is served to Envoys over LDS/CDS, reloaded on
	// change (after EnvoyDebounce) and on Reload.
	EnvoyDir      string
	EnvoyDebounce time.Duration

	// Store is where the state lives.
	Store StoreConfig

	ShutdownGrace       time.Duration // how long a graceful stop waits for calls in flight
	RevocationRetention time.Duration // expired revocations kept this long (0: forever)
	AuditMaxAge         time.Duration // 0: no age limit
	AuditMaxEntries     uint64        // 0: no count limit

	// Mandates: IssuancePolicy is a YAML file (empty: nobody may request
	// mandates), re-read on Reload.
	IssuancePolicy                         string
	KeyRotation, KeyOverlap, MandateMaxTTL time.Duration
	DelegationMaxDepth                     int
	ApprovalWindow                         time.Duration

	// Drift: DriftPolicy is a YAML file; without it the Drift* values
	// make one rule (DriftThreshold 0: off).
	DriftPolicy            string
	DriftThreshold         int
	DriftWindow            time.Duration
	DriftAction            string
	DriftIntents           []string
	DriftCountDeniedByRule bool
	DriftMaxActions        int
}

// StoreConfig chooses the store: etcd at EtcdEndpoints (then every
// instance on the same endpoints and prefix serves the same state), or
// else bbolt under DataDir.
type StoreConfig struct {
	DataDir string
	// KEKFile holds the key-encryption keys signing keys are sealed with;
	// required with etcd.
	KEKFile       string
	EtcdEndpoints []string
	EtcdPrefix    string
	// EtcdCA verifies the members (required unless every endpoint is on
	// loopback); EtcdCert and EtcdKey authenticate this instance.
	EtcdCA, EtcdCert, EtcdKey string
	// LeaseTTL is the lease of this instance's records and of the
	// leadership of singleton work; EtcdGrace how long etcd may be out
	// of reach before the xDS streams close.
	LeaseTTL, EtcdGrace time.Duration
	// InstanceID names this instance in etcd (default hostname-pid).
	InstanceID string
}

func (s StoreConfig) etcd() bool { return len(s.EtcdEndpoints) > 0 }

// clone returns a copy of c sharing no slice with it, with the defaults
// filled in.
func (c Config) clone() Config {
	for _, s := range []*[]string{&c.Operators, &c.ReplicaIDs, &c.AdminPeers, &c.EnvoyIDs, &c.DriftIntents,
		&c.Store.EtcdEndpoints} {
		*s = slices.Clone(*s)
	}
	if len(c.Operators) == 0 {
		c.Operators = []string{admin.DefaultOperator(c.TrustDomain)}
	}
	if len(c.ReplicaIDs) == 0 {
		c.ReplicaIDs = []string{"spiffe://" + c.TrustDomain + "/mandate/authz"}
	}
	if c.Store.InstanceID == "" {
		host, _ := os.Hostname()
		c.Store.InstanceID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	return c
}

// validate reports the first setting an instance cannot run with.
func (c *Config) validate() error {
	switch {
	case c.XDSListen == "":
		return errors.New("no XDSListen address")
	case c.TrustDomain == "":
		return errors.New("no trust domain")
	case c.Store.DataDir == "" && !c.Store.etcd():
		return errors.New("no store: a data directory or etcd endpoints")
	case c.ShutdownGrace < 0:
		return errors.New("ShutdownGrace must not be negative")
	case c.EnvoyDir != "" && c.EnvoyDebounce <= 0:
		return errors.New("EnvoyDebounce must be positive with an Envoy directory")
	}
	return nil
}
