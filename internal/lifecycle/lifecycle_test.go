package lifecycle

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// server is a stand-in for a blocking Serve: it returns errStopped once
// stopped, or fails with failWith when told to.
type server struct {
	stop chan struct{}
	fail chan error
	once sync.Once
}

var errStopped = errors.New("server stopped")

func newServer() *server { return &server{stop: make(chan struct{}), fail: make(chan error, 1)} }

func (s *server) serve() error {
	select {
	case <-s.stop:
		return errStopped
	case err := <-s.fail:
		return err
	}
}

func (s *server) halt() { s.once.Do(func() { close(s.stop) }) }

func waitDone(t *testing.T, g *Group) error {
	t.Helper()
	res := make(chan error, 1)
	go func() { res <- g.Wait() }()
	select {
	case err := <-res:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return")
		return nil
	}
}

func TestGroup(t *testing.T) {
	boom := errors.New("boom")
	for _, tc := range []struct {
		name    string
		end     func(cancel context.CancelFunc, a, b *server, loopErr chan error)
		wantErr string
	}{
		{"parent ends: clean stop", func(cancel context.CancelFunc, _, _ *server, _ chan error) { cancel() }, ""},
		{"a server fails: the group ends with its error", func(_ context.CancelFunc, _, b *server, _ chan error) { b.fail <- boom }, "admin: boom"},
		{"a server returns nil early: a failure", func(_ context.CancelFunc, a, _ *server, _ chan error) { a.fail <- nil }, "xds: stopped serving"},
		{"a loop fails", func(_ context.CancelFunc, _, _ *server, loopErr chan error) { loopErr <- boom }, "loop: boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			g := New(ctx)
			a, b := newServer(), newServer()
			var mu sync.Mutex
			var order []string
			stopper := func(name string, s *server) func() {
				return func() { mu.Lock(); order = append(order, name); mu.Unlock(); s.halt() }
			}
			g.Serve("xds", a.serve, stopper("xds", a))
			g.Serve("admin", b.serve, stopper("admin", b))
			loopErr := make(chan error, 1)
			loopDone := make(chan struct{})
			g.Go("loop", func(ctx context.Context) error {
				defer close(loopDone)
				select {
				case <-ctx.Done():
					return ctx.Err()
				case err := <-loopErr:
					return err
				}
			})
			tc.end(cancel, a, b, loopErr)
			err := waitDone(t, g)
			if (err == nil) != (tc.wantErr == "") || (err != nil && err.Error() != tc.wantErr) {
				t.Fatalf("Wait = %v, want %q", err, tc.wantErr)
			}
			if !slices.Equal(order, []string{"xds", "admin"}) {
				t.Fatalf("stops ran %v, want xds then admin", order)
			}
			select {
			case <-loopDone:
			default:
				t.Fatal("Wait returned before the loop did")
			}
			if g.Context().Err() == nil {
				t.Fatal("the group's context is still live")
			}
		})
	}
}

// TestServeAfterEnd: a server added once the group ended is stopped at
// once instead of serving on.
func TestServeAfterEnd(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	g := New(ctx)
	cancel()
	if err := waitDone(t, g); err != nil {
		t.Fatal(err)
	}
	s := newServer()
	g.Serve("late", s.serve, s.halt)
	select {
	case <-s.stop:
	case <-time.After(5 * time.Second):
		t.Fatal("a server added after the end was not stopped")
	}
}

// TestStart: Start runs parts and servers; servers stop in their order.
func TestStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	g := New(ctx)
	a, b := newServer(), newServer()
	var mu sync.Mutex
	var order []string
	stop := func(name string, s *server) func() {
		return func() { mu.Lock(); order = append(order, name); mu.Unlock(); s.halt() }
	}
	ran := make(chan struct{})
	g.Start([]Part{{"loop", func(ctx context.Context) error { close(ran); <-ctx.Done(); return nil }}},
		[]Server{{"a", a.serve, stop("a", a)}, {"b", b.serve, stop("b", b)}})
	<-ran
	cancel()
	if err := waitDone(t, g); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(order, []string{"a", "b"}) {
		t.Fatalf("stops ran %v, want a then b", order)
	}
}

// TestStack: releases run last pushed first, once; a push after the
// release runs at once.
func TestStack(t *testing.T) {
	var s Stack
	var got []int
	for i := range 3 {
		s.Push(func() { got = append(got, i) })
	}
	s.Release()
	s.Release()
	if !slices.Equal(got, []int{2, 1, 0}) {
		t.Fatalf("releases ran %v, want 2 1 0", got)
	}
	s.Push(func() { got = append(got, 9) })
	if !slices.Equal(got, []int{2, 1, 0, 9}) {
		t.Fatalf("a push after Release: %v", got)
	}
}
