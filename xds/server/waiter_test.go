package xdsserver

import (
	"context"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// waiting reports how many waits are registered, and on how many
// streams in all.
func (s *Server) waiting() (waits, regs int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, st := range s.streams {
		regs += len(st.waiters)
	}
	return len(s.waiters), regs
}

// TestWaitFollowsTheLaggingStreams: a wait registers on the streams that
// lag only; an ACK releases one registration; a stream that binds a node
// while the wait runs is waited for too, one that closes no longer.
func TestWaitFollowsTheLaggingStreams(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	v1, err := h.srv.SetRevocations(revs("r1"))
	if err != nil {
		t.Fatal(err)
	}
	a := subscribe(t, ctx, h, "replica-a", nil)
	bctx, bcancel := context.WithCancel(ctx)
	b := subscribe(t, bctx, h, "replica-b", nil)
	c := subscribe(t, ctx, h, "replica-c", nil)
	a.next()
	waitFor(t, "b and c connected", func() bool { return len(h.srv.Status()) == 3 })
	r := recvDelta(t, b.st) // received, never ACKed
	_ = r
	waitFor(t, "a acked", func() bool {
		return replica(t, h.srv, "replica-a").Types[mandatev1.RevocationTypeURL].AckedVersion == v1
	})

	done := make(chan struct {
		n   int
		err error
	}, 1)
	go func() {
		n, err := h.srv.WaitAckedOrRejected(ctx, mandatev1.RevocationTypeURL, v1)
		done <- struct {
			n   int
			err error
		}{n, err}
	}()
	waitFor(t, "wait registered on b and c", func() bool { w, r := h.srv.waiting(); return w == 1 && r == 2 })
	c.next()
	waitFor(t, "c's registration released", func() bool { w, r := h.srv.waiting(); return w == 1 && r == 1 })

	// A new stream binds a node: the wait looks again and waits for it.
	d := subscribe(t, ctx, h, "replica-d", nil)
	waitFor(t, "wait registered on b and d", func() bool { w, r := h.srv.waiting(); return w == 1 && r == 2 })
	d.next()
	waitFor(t, "d's registration released", func() bool { w, r := h.srv.waiting(); return w == 1 && r == 1 })
	select {
	case got := <-done:
		t.Fatalf("wait returned %+v while b lags", got)
	default:
	}

	// b goes away without ACKing: the wait ends with the three others.
	bcancel()
	select {
	case got := <-done:
		if got.err != nil || got.n != 3 {
			t.Fatalf("wait = %d, %v; want 3 acked", got.n, got.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("wait still blocked after the lagging stream closed")
	}
	if w, r := h.srv.waiting(); w != 0 || r != 0 {
		t.Fatalf("after the wait: %d waits, %d registrations left", w, r)
	}

	// A wait that ends with its context leaves nothing registered.
	v2, _ := h.srv.SetRevocations(revs("r1", "r2"))
	short, scancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer scancel()
	if _, err := h.srv.WaitAckedOrRejected(short, mandatev1.RevocationTypeURL, v2); err == nil {
		t.Fatal("wait for an unACKed version returned nil")
	}
	if w, r := h.srv.waiting(); w != 0 || r != 0 {
		t.Fatalf("after a timed-out wait: %d waits, %d registrations left", w, r)
	}
}
