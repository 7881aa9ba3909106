package xdsserver

import "time"

// AckTimes calls f, under the server's lock, for every connected
// replica: its node id and the version of typeURL it ACKed last, and
// when (0 and the zero time when it ACKed none). The fan-out benchmark
// reads the ACK times of 1,000 replicas after every push with it:
// Status would build a whole report per replica, garbage a real push
// does not make.
func AckTimes(s *Server, typeURL string, f func(node string, acked uint64, at time.Time)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, n := range s.nodes {
		if n.kind != NodeReplica || n.streams == 0 {
			continue
		}
		if nt := n.types[typeURL]; nt != nil && nt.hasAck {
			f(id, nt.acked, nt.ackedAt)
		} else {
			f(id, 0, time.Time{})
		}
	}
}
