package replica

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"
)

// Config is everything a replica is built from: plain values, parsed
// and checked by New, which keeps its own copy (a caller changing its
// Config, or the slices in it, after New changes nothing).
type Config struct {
	// Listen is the address of the ext_authz gRPC server (port 0 picks a
	// free one; Addrs tells which).
	Listen string
	// MetricsAddr serves /metrics, /healthz and /readyz (and /debug/pprof
	// with Pprof). Empty: off.
	MetricsAddr string
	Pprof       bool
	// AddrFile, when set, receives the bound addresses as JSON
	// ({"grpc","metrics"}) once the replica serves.
	AddrFile string

	// Where policies come from: PolicyDir (standalone, watched), or the
	// control plane at XDSServers (one stream at a time, moving to the
	// next address when it breaks), or, with neither, the example
	// policies embedded in the binary.
	PolicyDir  string
	XDSServers []string
	// NodeID is the xDS node id (default hostname-pid).
	NodeID string
	// ControlPlaneIDs are the SPIFFE ID patterns of the control plane to
	// accept (default spiffe://<first trust domain>/mandate/cp).
	ControlPlaneIDs []string
	// StaleBudget: with XDSServers, how long the replica decides without
	// the control plane before failing closed the StaleMode way: "all"
	// (every request) or "sensitive" (routes labelled sensitivity=high).
	StaleBudget time.Duration
	StaleMode   string
	// MaxRules is the largest policy set (in rules) accepted from the
	// control plane (0: no limit).
	MaxRules int

	// Transport: mTLS with an X.509 SVID from the Workload API (waited
	// for at most SVIDTimeout), callers of Check authorized by
	// AllowedCallers; or Plaintext, on loopback only.
	WorkloadAPI    string
	SVIDTimeout    time.Duration
	Plaintext      bool
	AllowedCallers []string

	// Identity of the callers.
	TrustDomains           []string // at least one
	TrustedProxies         []string // whose x-forwarded-client-cert is believed
	RequireXFCCBy          bool
	RequirePeerCertificate bool

	// Decision cache: CacheTTL 0 turns it off.
	CacheTTL  time.Duration
	CacheSize int64

	// DecisionLog receives one JSON record per decision (nil: off). The
	// caller owns it; the replica writes its last record before Run
	// returns.
	DecisionLog     io.Writer
	LogMCPArguments bool
	LogRedact       []string

	// Limits of what one request may carry.
	MCPMaxBody, MCPMaxDepth         int
	MaxHeaderBytes, MaxRequestBytes int
	MaxConcurrentStreams            uint32

	// Mandates to accept: their issuer (default spiffe://<first trust
	// domain>/mandate/cp) and audience; in standalone mode, the
	// verification keys are read from MandateKeysFile (JSON).
	MandateIssuer   string
	MandateAudience string
	MandateKeysFile string
}

// Stale modes.
const (
	StaleAll       = "all"
	StaleSensitive = "sensitive"
)

// clone returns a copy of c sharing no slice with it, with the defaults
// filled in.
func (c Config) clone() Config {
	for _, s := range []*[]string{&c.XDSServers, &c.ControlPlaneIDs, &c.AllowedCallers, &c.TrustDomains,
		&c.TrustedProxies, &c.LogRedact} {
		*s = slices.Clone(*s)
	}
	if len(c.TrustDomains) > 0 {
		cp := "spiffe://" + c.TrustDomains[0] + "/mandate/cp"
		if c.MandateIssuer == "" {
			c.MandateIssuer = cp
		}
		if len(c.ControlPlaneIDs) == 0 {
			c.ControlPlaneIDs = []string{cp}
		}
	}
	if c.NodeID == "" {
		host, _ := os.Hostname()
		c.NodeID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	return c
}

// validate reports the first setting a replica cannot run with.
func (c *Config) validate() error {
	switch {
	case c.Listen == "":
		return errors.New("no Listen address")
	case c.PolicyDir != "" && len(c.XDSServers) > 0:
		return errors.New("at most one of PolicyDir (standalone) and XDSServers (control plane)")
	case len(c.TrustDomains) == 0:
		return errors.New("no trust domain")
	case c.StaleMode != StaleAll && c.StaleMode != StaleSensitive:
		return fmt.Errorf("StaleMode must be %q or %q, not %q", StaleAll, StaleSensitive, c.StaleMode)
	case len(c.XDSServers) > 0 && c.StaleBudget <= 0:
		return errors.New("StaleBudget must be positive with a control plane")
	case c.MandateKeysFile != "" && len(c.XDSServers) > 0:
		return errors.New("MandateKeysFile is for standalone mode; with a control plane keys come from it")
	case c.MCPMaxBody <= 0 || c.MCPMaxDepth <= 0:
		return errors.New("MCPMaxBody and MCPMaxDepth must be positive")
	case c.MaxHeaderBytes <= 0 || c.MaxRequestBytes <= 0 || c.MaxConcurrentStreams == 0:
		return errors.New("MaxHeaderBytes, MaxRequestBytes and MaxConcurrentStreams must be positive")
	case c.RequireXFCCBy && len(c.TrustedProxies) == 0:
		return errors.New("RequireXFCCBy needs a trusted proxy")
	case !c.Plaintext && c.SVIDTimeout <= 0:
		return errors.New("SVIDTimeout must be positive with mTLS")
	case !c.Plaintext && len(c.AllowedCallers) == 0:
		return errors.New("AllowedCallers are required with mTLS")
	case c.CacheTTL > 0 && c.CacheSize <= 0:
		return errors.New("CacheSize must be positive with a cache")
	}
	return nil
}
