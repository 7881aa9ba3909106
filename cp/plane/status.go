package plane

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/cp/fleet"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// WithFleet makes Status and WaitAcked see every replica of every
// instance sharing the store (cp/fleet: Presence on etcd); without it
// they see this instance's xDS server alone.
func WithFleet(v fleet.View) Option {
	return func(p *Plane) error {
		if v == nil {
			return errors.New("plane: nil fleet view")
		}
		p.fleet = v
		return nil
	}
}

// Status returns every replica of the fleet, sorted by node id then
// instance: a node id connected to two instances has a row for each. The
// rows are what was last known when the other instances' state cannot be
// followed.
func (p *Plane) Status() []fleet.Node {
	ns, _ := p.fleet.Nodes()
	return ns
}

// EnvoyStatus returns every Envoy that fetches listeners and clusters
// (LDS/CDS) from the xDS server, sorted by node id.
func (p *Plane) EnvoyStatus() []xdsserver.ReplicaStatus { return p.xds.EnvoyStatus() }

// EnvoyVersions returns the current version of the Listener and Cluster
// types, keyed by type URL.
func (p *Plane) EnvoyVersions() map[string]string { return p.xds.EnvoyVersions() }

// SetListeners publishes the Envoy listeners (LDS) and notes when the
// version was committed, so that Lag measures Envoys exactly.
func (p *Plane) SetListeners(ls map[string]*listenerv3.Listener) (string, error) {
	v, err := p.xds.SetListeners(ls)
	return p.published(xdsserver.ListenerTypeURL, v, err)
}

// SetClusters publishes the Envoy clusters (CDS); see SetListeners.
func (p *Plane) SetClusters(cs map[string]*clusterv3.Cluster) (string, error) {
	v, err := p.xds.SetClusters(cs)
	return p.published(xdsserver.ClusterTypeURL, v, err)
}

// currentVersion is the version of typeURL now served: mandate.v1 types
// for replicas, Listener and Cluster for Envoys.
func (p *Plane) currentVersion(typeURL string) string {
	if xdsserver.KindOf(typeURL) == xdsserver.NodeEnvoy {
		return p.xds.EnvoyVersions()[typeURL]
	}
	return p.xds.Versions()[typeURL]
}

// Lag returns how long the oldest version of typeURL that the node (a
// replica, or an Envoy for the Listener and Cluster types) has not ACKed
// has been committed; zero when it is up to date. A version committed
// without the plane (an Envoy resource set on the xDS server directly)
// counts from when the plane started.
func (p *Plane) Lag(rs xdsserver.ReplicaStatus, typeURL string) time.Duration {
	cur, err := strconv.ParseUint(p.currentVersion(typeURL), 10, 64)
	if err != nil {
		return 0
	}
	var acked uint64
	if ts, ok := rs.Types[typeURL]; ok && ts.AckedVersion != "" {
		acked, _ = strconv.ParseUint(ts.AckedVersion, 10, 64)
	}
	if acked >= cur {
		return 0
	}
	p.cmu.Lock()
	defer p.cmu.Unlock()
	oldest := time.Time{}
	for v, at := range p.commits[typeURL] {
		if v > acked && (oldest.IsZero() || at.Before(oldest)) {
			oldest = at
		}
	}
	if oldest.IsZero() {
		oldest = p.started
	}
	if d := p.now().Sub(oldest); d > 0 {
		return d
	}
	return 0
}

// WaitAcked returns when every replica connected to a live instance of
// the fleet has ACKed typeURL at version or later, with how many replicas
// that is (0 when none is connected: the caller must say so). A node id
// connected to several instances is one replica, ACKed when it ACKed on
// each (fleet.WaitAcked). A replica that NACKs the version (or a later
// one) ends the wait at once with a *NackError.
func (p *Plane) WaitAcked(ctx context.Context, typeURL, version string) (int, error) {
	want, err := strconv.ParseUint(version, 10, 64)
	if err != nil {
		return 0, invalid("version %q is not a number", version)
	}
	if !knownType(typeURL) {
		return 0, invalid("unknown type URL %q", typeURL)
	}
	n, err := fleet.WaitAcked(ctx, p.fleet, typeURL, want)
	var re *xdsserver.RejectedError
	if errors.As(err, &re) {
		return 0, &NackError{Node: re.Node, Version: re.Version, Message: re.Message}
	}
	if err != nil {
		return 0, fmt.Errorf("plane: %w", err)
	}
	return n, nil
}

func knownType(t string) bool {
	for _, u := range mandatev1.TypeURLs() {
		if u == t {
			return true
		}
	}
	return false
}

// IsNack reports whether err is a replica's rejection.
func IsNack(err error) bool {
	var ne *NackError
	return errors.As(err, &ne)
}

// lagCollector exports per-replica, per-type lag and the connected flag
// at scrape time, for the replicas of this instance (each instance
// exports its own).
type lagCollector struct{ p *Plane }

var (
	lagDesc = prometheus.NewDesc("mandate_cp_replica_lag_seconds",
		"How long the oldest change a replica has not ACKed has been committed (0 = up to date), by node and type.",
		[]string{"node", "type"}, nil)
	staleDesc = prometheus.NewDesc("mandate_cp_replica_last_seen_seconds",
		"Seconds since a replica last sent anything on its ADS stream, by node.",
		[]string{"node"}, nil)
)

func (c lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- lagDesc; ch <- staleDesc }

func (c lagCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.p.now()
	for _, rs := range c.p.xds.Status() {
		if !rs.Connected {
			continue
		}
		for _, t := range mandatev1.TypeURLs() {
			ch <- prometheus.MustNewConstMetric(lagDesc, prometheus.GaugeValue, c.p.Lag(rs, t).Seconds(), rs.NodeID, short(t))
		}
		if !rs.LastSeen.IsZero() {
			ch <- prometheus.MustNewConstMetric(staleDesc, prometheus.GaugeValue, now.Sub(rs.LastSeen).Seconds(), rs.NodeID)
		}
	}
}

// LineDiff returns a minimal line diff of a and b: unchanged lines are
// prefixed "  ", removed "- ", added "+ ". Inputs longer than 4000 lines
// are shown as whole removal and addition.
func LineDiff(a, b string) string {
	x, y := strings.Split(strings.TrimSuffix(a, "\n"), "\n"), strings.Split(strings.TrimSuffix(b, "\n"), "\n")
	var out strings.Builder
	if len(x) > 4000 || len(y) > 4000 {
		for _, l := range x {
			out.WriteString("- " + l + "\n")
		}
		for _, l := range y {
			out.WriteString("+ " + l + "\n")
		}
		return out.String()
	}
	// lcs[i][j] = LCS length of x[i:], y[j:]
	lcs := make([][]int32, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int32, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			out.WriteString("  " + x[i] + "\n")
			i++
			j++
		case i < len(x) && (j == len(y) || lcs[i+1][j] >= lcs[i][j+1]):
			out.WriteString("- " + x[i] + "\n")
			i++
		default:
			out.WriteString("+ " + y[j] + "\n")
			j++
		}
	}
	return out.String()
}
