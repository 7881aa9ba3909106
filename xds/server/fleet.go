package xdsserver

// NodeAcks is what a node's open streams agree on, for counting it in a
// wait by another process (cp/fleet publishes it for the whole fleet).
type NodeAcks struct {
	// Peer is the identity the node id is bound to (its SPIFFE ID; ""
	// over plaintext).
	Peer string
	// Acked is, per type URL, the lowest version ACKed over every open
	// stream of the node; a type is absent when one stream has ACKed
	// nothing of it.
	Acked map[string]uint64
	// Rejected is, per type URL, the highest version one open stream
	// rejected and has not ACKed since (the lowest node-visible answer
	// is what a wait must see).
	Rejected map[string]Rejection
}

// Rejection is one stream's NACK of a version.
type Rejection struct {
	Version uint64
	Message string
}

// Snapshot returns, under one lock, the status of every replica (as
// Status does) and the ACK state of the connected ones, keyed by node id:
// what a fleet-wide wait counts exactly as WaitAckedOrRejected counts the
// local streams.
func (s *Server) Snapshot() ([]ReplicaStatus, map[string]NodeAcks) {
	st := s.status(NodeReplica)
	s.mu.Lock()
	defer s.mu.Unlock()
	acks := map[string]NodeAcks{}
	for _, ss := range s.streams {
		if ss.node == "" || ss.kind != NodeReplica {
			continue
		}
		na, seen := acks[ss.node]
		if !seen {
			na = NodeAcks{Acked: map[string]uint64{}, Rejected: map[string]Rejection{}}
			if n := s.nodes[ss.node]; n != nil {
				na.Peer = n.peer
			}
			for t, v := range ss.acked {
				na.Acked[t] = v
			}
		} else {
			for t, v := range na.Acked {
				if sv, ok := ss.acked[t]; !ok {
					delete(na.Acked, t)
				} else if sv < v {
					na.Acked[t] = sv
				}
			}
		}
		for t, nk := range ss.nacked {
			if r, ok := na.Rejected[t]; !ok || nk.version > r.Version {
				na.Rejected[t] = Rejection{Version: nk.version, Message: nk.msg}
			}
		}
		acks[ss.node] = na
	}
	return st, acks
}

// Changed returns a channel closed at the next change of the replicas'
// status or ACK state.
func (s *Server) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.changedTaken = true
	return s.changed
}
