package xdsserver

import (
	"context"
	"errors"
	"io"
	"sync"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gate lets the server end every open stream and refuse new ones
// (Suspend), for a control plane that can no longer vouch for what it
// serves, until Resume.
type gate struct {
	mu      sync.Mutex
	reason  string // non-empty while suspended
	streams map[*gateStream]struct{}
}

type gateStream struct {
	cancel context.CancelFunc
}

// Suspend ends every open ADS stream with Unavailable and reason, and
// refuses new streams the same way until Resume: replicas move to
// another control-plane instance (or go stale and fail closed) rather
// than follow one that cannot see the store. Suspend while suspended
// only changes the reason.
func (s *Server) Suspend(reason string) {
	if reason == "" {
		reason = "control plane suspended"
	}
	s.gate.mu.Lock()
	was := s.gate.reason != ""
	s.gate.reason = reason
	open := make([]*gateStream, 0, len(s.gate.streams))
	for g := range s.gate.streams {
		open = append(open, g)
	}
	s.gate.mu.Unlock()
	for _, g := range open {
		g.cancel()
	}
	if !was {
		s.log.Warn("xds streams closed and refused", "reason", reason, "closed", len(open))
	}
}

// Resume accepts streams again after Suspend.
func (s *Server) Resume() {
	s.gate.mu.Lock()
	was := s.gate.reason != ""
	s.gate.reason = ""
	s.gate.mu.Unlock()
	if was {
		s.log.Info("xds streams accepted again")
	}
}

// Suspended returns the reason given to Suspend, "" when serving.
func (s *Server) Suspended() string {
	s.gate.mu.Lock()
	defer s.gate.mu.Unlock()
	return s.gate.reason
}

// enter registers a stream, or refuses it while suspended.
func (s *Server) enter(parent context.Context) (context.Context, *gateStream, error) {
	s.gate.mu.Lock()
	defer s.gate.mu.Unlock()
	if s.gate.reason != "" {
		return nil, nil, status.Error(codes.Unavailable, "xdsserver: "+s.gate.reason)
	}
	ctx, cancel := context.WithCancel(parent)
	g := &gateStream{cancel: cancel}
	if s.gate.streams == nil {
		s.gate.streams = map[*gateStream]struct{}{}
	}
	s.gate.streams[g] = struct{}{}
	return ctx, g, nil
}

func (s *Server) leave(g *gateStream) {
	s.gate.mu.Lock()
	delete(s.gate.streams, g)
	s.gate.mu.Unlock()
	g.cancel()
}

// gated is the ADS service as registered: go-control-plane's server,
// each stream wrapped so that Suspend can end it.
type gated struct {
	s     *Server
	inner discovery.AggregatedDiscoveryServiceServer
}

func (a gated) StreamAggregatedResources(st grpc.BidiStreamingServer[discovery.DiscoveryRequest, discovery.DiscoveryResponse]) error {
	return serveGated(a.s, st, a.inner.StreamAggregatedResources)
}

func (a gated) DeltaAggregatedResources(st grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]) error {
	return serveGated(a.s, st, a.inner.DeltaAggregatedResources)
}

// serveGated runs handler on a view of st whose Recv ends when the
// gate cancels the stream, so the handler returns; the stream then ends
// with Unavailable and the reason.
func serveGated[Req, Res any](s *Server, st grpc.BidiStreamingServer[Req, Res], handler func(grpc.BidiStreamingServer[Req, Res]) error) error {
	ctx, g, err := s.enter(st.Context())
	if err != nil {
		return err
	}
	defer s.leave(g)
	v := &gatedStream[Req, Res]{BidiStreamingServer: st, ctx: ctx, reqs: make(chan recvd[Req])}
	go v.pump()
	err = handler(v)
	if ctx.Err() != nil && st.Context().Err() == nil {
		if reason := s.Suspended(); reason != "" {
			return status.Error(codes.Unavailable, "xdsserver: "+reason)
		}
	}
	return err
}

type recvd[Req any] struct {
	req *Req
	err error
}

type gatedStream[Req, Res any] struct {
	grpc.BidiStreamingServer[Req, Res]
	ctx  context.Context
	reqs chan recvd[Req]
}

func (v *gatedStream[Req, Res]) Context() context.Context { return v.ctx }

// pump reads the real stream until it ends (the handler returned and the
// RPC finished, or the peer went away).
func (v *gatedStream[Req, Res]) pump() {
	for {
		r, err := v.BidiStreamingServer.Recv()
		select {
		case v.reqs <- recvd[Req]{r, err}:
		case <-v.ctx.Done():
			return
		}
		if err != nil {
			return
		}
	}
}

func (v *gatedStream[Req, Res]) Recv() (*Req, error) {
	select {
	case r := <-v.reqs:
		return r.req, r.err
	case <-v.ctx.Done():
		if errors.Is(context.Cause(v.ctx), context.Canceled) {
			return nil, io.EOF
		}
		return nil, v.ctx.Err()
	}
}
