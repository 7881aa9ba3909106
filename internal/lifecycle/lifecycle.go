// Package lifecycle runs the long-lived parts of a process (servers,
// loops) under one context: the first part that fails ends them all, and
// the process stops its parts in the order they were started, then
// returns that first failure. The assemblies of the binaries
// (authz/replica, cp/instance) run in one, so that a server that cannot
// serve stops the process instead of leaving it half up; a Stack releases
// what their constructors opened.
package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Group is a set of parts sharing one lifetime. Create it with New; the
// zero Group is not usable.
type Group struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	err     error    // the first failure
	stops   []func() // run in order when the group ends
	stopped bool
}

// New returns a group that ends when parent ends or a part fails.
func New(parent context.Context) *Group {
	ctx, cancel := context.WithCancel(parent)
	return &Group{ctx: ctx, cancel: cancel}
}

// Context is done once the group ends.
func (g *Group) Context() context.Context { return g.ctx }

// fail records the first failure and ends the group.
func (g *Group) fail(name string, err error) {
	g.mu.Lock()
	if g.err == nil {
		g.err = fmt.Errorf("%s: %w", name, err)
	}
	g.mu.Unlock()
	g.cancel()
}

// Go runs part until it returns. An error returned before the group
// ended ends the group and is what Wait returns; part must return once
// its context is done.
func (g *Group) Go(name string, part func(ctx context.Context) error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := part(g.ctx); err != nil && g.ctx.Err() == nil {
			g.fail(name, err)
		}
	}()
}

// Serve runs serve (a blocking Serve of a gRPC or HTTP server) and, once
// the group ends, stop, which must make serve return. An error serve
// returns before the group ended ends the group; what it returns after
// (grpc.ErrServerStopped, http.ErrServerClosed) is ignored. Stops run in
// the order their Serve was called.
func (g *Group) Serve(name string, serve func() error, stop func()) {
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		stop()
		return
	}
	g.stops = append(g.stops, stop)
	g.mu.Unlock()
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		err := serve()
		if g.ctx.Err() == nil {
			if err == nil {
				err = errors.New("stopped serving")
			}
			g.fail(name, err)
		}
	}()
}

// Wait blocks until the group ends (its parent ended or a part failed),
// runs the stops in order, waits for every part to return, and returns
// the first failure (nil when the parent ended first). Calling it again
// returns the same at once.
func (g *Group) Wait() error {
	<-g.ctx.Done()
	g.mu.Lock()
	stops := g.stops
	g.stops, g.stopped = nil, true
	g.mu.Unlock()
	for _, stop := range stops {
		stop()
	}
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.err
}

// Part is a long-lived loop of a process: Start runs it with Go.
type Part struct {
	Name string
	Run  func(ctx context.Context) error
}

// Server is a blocking server of a process: Start runs it with Serve.
type Server struct {
	Name  string
	Serve func() error
	Stop  func()
}

// Start runs every part (Go) and every server (Serve, stopped in this
// order when the group ends).
func (g *Group) Start(parts []Part, servers []Server) {
	for _, p := range parts {
		g.Go(p.Name, p.Run)
	}
	for _, s := range servers {
		g.Serve(s.Name, s.Serve, s.Stop)
	}
}

// Stack holds the releases of what a constructor opened, to run them
// last opened first, once: on the constructor's error, or when the
// process it built stops. The zero Stack is ready to use.
type Stack struct {
	mu       sync.Mutex
	releases []func()
	done     bool
}

// Push adds the release of something just opened. Pushed after Release
// ran, it runs at once.
func (s *Stack) Push(release func()) {
	s.mu.Lock()
	if s.done {
		s.mu.Unlock()
		release()
		return
	}
	s.releases = append(s.releases, release)
	s.mu.Unlock()
}

// Release runs the releases, last pushed first. Later calls do nothing.
func (s *Stack) Release() {
	s.mu.Lock()
	rs := s.releases
	s.releases, s.done = nil, true
	s.mu.Unlock()
	for i := len(rs) - 1; i >= 0; i-- {
		rs[i]()
	}
}
