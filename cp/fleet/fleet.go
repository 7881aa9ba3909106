// Package fleet is what the mandate-cp instances sharing one store know
// of each other: which replica is connected to which instance and what it
// ACKed (so `--wait` and `status` see every replica, whichever instance
// it uses), and which instance runs the singletons (key rotation, sweeps,
// drift actions, approval expiry).
//
// Instances never talk to each other. On etcd, each publishes the ACK
// state of its replicas under a lease of its own (Presence) and watches
// everybody else's: a replica whose instance died is gone from the view
// when the lease expires. The singletons run on the leader of a
// concurrency.Election on the same etcd (Election). With bbolt one
// instance is the whole fleet: Local and Always.
package fleet

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// Node is one replica as one instance sees it.
type Node struct {
	xdsserver.ReplicaStatus
	// Instance is the mandate-cp instance the replica is connected to
	// (--instance-id).
	Instance string
	// Peer is the SPIFFE ID the node id is bound to on that instance.
	Peer string
	// Acked and Rejected are what every open stream of the node agrees
	// on (xdsserver.NodeAcks); empty when it is not connected.
	Acked    map[string]uint64              `json:",omitempty"`
	Rejected map[string]xdsserver.Rejection `json:",omitempty"`
}

// Source is the local xDS server (*xdsserver.Server).
type Source interface {
	Snapshot() ([]xdsserver.ReplicaStatus, map[string]xdsserver.NodeAcks)
	Changed() <-chan struct{}
}

// View is the replicas of the whole fleet.
type View interface {
	// Nodes returns every replica of every live instance, sorted by node
	// id then instance. The error says the view may be incomplete (the
	// other instances' state could not be followed): nodes are what was
	// last known.
	Nodes() ([]Node, error)
	// Changed returns a channel closed at the next change of Nodes.
	Changed() <-chan struct{}
}

// nodesOf turns a source's snapshot into the nodes of instance.
func nodesOf(instance string, src Source) []Node {
	st, acks := src.Snapshot()
	out := make([]Node, 0, len(st))
	for _, rs := range st {
		n := Node{ReplicaStatus: rs, Instance: instance}
		if a, ok := acks[rs.NodeID]; ok {
			n.Peer, n.Acked, n.Rejected = a.Peer, a.Acked, a.Rejected
		}
		out = append(out, n)
	}
	return out
}

func sortNodes(ns []Node) {
	slices.SortFunc(ns, func(a, b Node) int {
		if c := strings.Compare(a.NodeID, b.NodeID); c != 0 {
			return c
		}
		return strings.Compare(a.Instance, b.Instance)
	})
}

// Local is the view of a fleet of one instance: its own xDS server.
type Local struct {
	instance string
	src      Source
}

// NewLocal returns the view of a single instance: named instance, or
// unnamed ("") when it is the whole fleet (bbolt).
func NewLocal(instance string, src Source) (*Local, error) {
	if instance != "" {
		if err := CheckInstanceID(instance); err != nil {
			return nil, err
		}
	}
	if src == nil {
		return nil, fmt.Errorf("fleet: nil source")
	}
	return &Local{instance: instance, src: src}, nil
}

// Nodes implements View.
func (l *Local) Nodes() ([]Node, error) {
	ns := nodesOf(l.instance, l.src)
	sortNodes(ns)
	return ns, nil
}

// Changed implements View.
func (l *Local) Changed() <-chan struct{} { return l.src.Changed() }

// MaxInstanceID bounds an instance id.
const MaxInstanceID = 253

// CheckInstanceID accepts 1..253 printable bytes without "/".
func CheckInstanceID(id string) error {
	if id == "" || len(id) > MaxInstanceID || !utf8.ValidString(id) || strings.ContainsRune(id, '/') {
		return fmt.Errorf("fleet: instance id %.64q: want 1..%d printable bytes without /", id, MaxInstanceID)
	}
	for _, r := range id {
		if r <= 0x20 || r == 0x7f {
			return fmt.Errorf("fleet: instance id %.64q: want 1..%d printable bytes without /", id, MaxInstanceID)
		}
	}
	return nil
}

// WaitAcked returns when every replica connected to a live instance of
// the fleet has ACKed typeURL at want or later, with how many replicas
// that is (0 when none is connected). A node id seen on several
// instances is one replica, ACKed only when it ACKed on each of them,
// also when different peers use it there: one peer's ACK never vouches
// for another's stream, and a node id is never counted twice. A replica
// that rejected the version (or a later one) ends the wait at once with
// a *xdsserver.RejectedError. While the view may be incomplete the wait
// goes on; when ctx ends first, the error names the replicas that lag.
func WaitAcked(ctx context.Context, v View, typeURL string, want uint64) (int, error) {
	for {
		ch := v.Changed()
		nodes, verr := v.Nodes()
		acked, lagging, rejected := count(nodes, typeURL, want)
		if rejected != nil {
			return 0, rejected
		}
		if verr == nil && len(lagging) == 0 {
			return acked, nil
		}
		select {
		case <-ctx.Done():
			if verr != nil {
				return 0, fmt.Errorf("fleet: waiting for version %d: %w (%w)", want, verr, ctx.Err())
			}
			return 0, fmt.Errorf("fleet: waiting for version %d: replicas not acked: %v: %w", want, lagging, ctx.Err())
		case <-ch:
		}
	}
}

// count merges nodes by node id.
func count(nodes []Node, typeURL string, want uint64) (acked int, lagging []string, rejected *xdsserver.RejectedError) {
	type state struct {
		lag   bool
		where []string
	}
	byID := map[string]*state{}
	var ids []string
	for _, n := range nodes {
		if !n.Connected {
			continue
		}
		s := byID[n.NodeID]
		if s == nil {
			s = &state{}
			byID[n.NodeID] = s
			ids = append(ids, n.NodeID)
		}
		if v, ok := n.Acked[typeURL]; ok && v >= want {
			continue
		}
		s.lag = true
		if n.Instance != "" {
			s.where = append(s.where, n.Instance)
		}
		if r, ok := n.Rejected[typeURL]; ok && r.Version >= want && (rejected == nil || n.NodeID < rejected.Node) {
			rejected = &xdsserver.RejectedError{Node: n.NodeID, Version: fmt.Sprint(r.Version), Message: r.Message}
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		switch s := byID[id]; {
		case s.lag && len(s.where) > 0:
			lagging = append(lagging, id+" (on "+strings.Join(s.where, ", ")+")")
		case s.lag:
			lagging = append(lagging, id)
		default:
			acked++
		}
	}
	return acked, lagging, rejected
}
