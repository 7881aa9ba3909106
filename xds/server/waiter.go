package xdsserver

// ackWaiter is one WaitAcked call waiting for the streams that lag: it
// is registered on each of them, and an ACK of the version on one of
// them costs that stream's short list of waiters, not a pass over every
// stream. The wait looks at every stream again only when the last
// lagging stream ACKed, or when the set of streams changed (a node bound
// or a stream closed), or, for WaitAckedOrRejected, on a NACK.
type ackWaiter struct {
	typeURL    string
	want       uint64
	stopOnNack bool
	remaining  int // lagging streams that have not ACKed want yet
	fired      bool
	ch         chan struct{}
}

func (w *ackWaiter) fire() {
	if !w.fired {
		w.fired = true
		close(w.ch)
	}
}

// addWaiterLocked registers w on the lagging streams.
func (s *Server) addWaiterLocked(w *ackWaiter, lagging []*streamState) {
	w.remaining = len(lagging)
	for _, st := range lagging {
		st.waiters = append(st.waiters, w)
	}
	if s.waiters == nil {
		s.waiters = map[*ackWaiter]struct{}{}
	}
	s.waiters[w] = struct{}{}
}

// dropWaiterLocked unregisters w (the streams may have closed since).
func (s *Server) dropWaiterLocked(w *ackWaiter, lagging []*streamState) {
	delete(s.waiters, w)
	for _, st := range lagging {
		for i, x := range st.waiters {
			if x == w {
				last := len(st.waiters) - 1
				st.waiters[i] = st.waiters[last]
				st.waiters[last] = nil
				st.waiters = st.waiters[:last]
				break
			}
		}
	}
}

// ackedLocked tells st's waiters that it ACKed version v of typeURL.
func (st *streamState) ackedLocked(typeURL string, v uint64) {
	for i := 0; i < len(st.waiters); {
		w := st.waiters[i]
		if w.typeURL != typeURL || v < w.want {
			i++
			continue
		}
		last := len(st.waiters) - 1
		st.waiters[i] = st.waiters[last]
		st.waiters[last] = nil
		st.waiters = st.waiters[:last]
		if w.remaining--; w.remaining <= 0 {
			w.fire()
		}
	}
}

// nackedLocked wakes st's waiters that end on a NACK of typeURL.
func (st *streamState) nackedLocked(typeURL string) {
	for _, w := range st.waiters {
		if w.typeURL == typeURL && w.stopOnNack {
			w.fire()
		}
	}
}

// streamsChangedLocked wakes every waiter to look at the streams again.
func (s *Server) streamsChangedLocked() {
	for w := range s.waiters {
		w.fire()
	}
}
