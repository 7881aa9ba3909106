package xdsserver

import (
	"context"
	"sync"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gate lets the server end every open stream and refuse new ones
// (Suspend), for a control plane that can no longer vouch for what it
// serves, until Resume. Streams are served by one go-control-plane server
// per generation, whose context Suspend cancels: every stream of it
// returns at once (go-control-plane's stream loops watch that context),
// without a goroutine per stream to interrupt its Recv.
type gate struct {
	mu     sync.Mutex
	reason string // non-empty while suspended
	gen    *generation
	open   int // streams being served
}

// generation is one go-control-plane server and the context that ends
// its streams.
type generation struct {
	id     uint64
	ctx    context.Context
	cancel context.CancelFunc
	xds    serverv3.Server
	// reason is why Suspend ended it (read under gate.mu).
	reason string
}

// newGeneration starts the go-control-plane server of generation id,
// its streams keyed apart from the other generations' (stream ids start
// at 1 in each).
func (s *Server) newGeneration(id uint64) *generation {
	ctx, cancel := context.WithCancel(s.ctx)
	return &generation{id: id, ctx: ctx, cancel: cancel, xds: serverv3.NewServer(ctx, s.mux, s.callbacks(id))}
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
	open := s.gate.open
	if !was {
		s.gate.gen.reason = reason
		s.gate.gen.cancel()
	}
	s.gate.mu.Unlock()
	if !was {
		s.log.Warn("xds streams closed and refused", "reason", reason, "closed", open)
	}
}

// Resume accepts streams again after Suspend.
func (s *Server) Resume() {
	s.gate.mu.Lock()
	was := s.gate.reason != ""
	s.gate.reason = ""
	if was {
		s.gate.gen = s.newGeneration(s.gate.gen.id + 1)
	}
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

// enter returns the generation a new stream is served by, or refuses it
// while suspended.
func (s *Server) enter() (*generation, error) {
	s.gate.mu.Lock()
	defer s.gate.mu.Unlock()
	if s.gate.reason != "" {
		return nil, status.Error(codes.Unavailable, "xdsserver: "+s.gate.reason)
	}
	s.gate.open++
	return s.gate.gen, nil
}

// leave ends a stream of g and returns why Suspend ended g ("" when it
// did not).
func (s *Server) leave(g *generation) string {
	s.gate.mu.Lock()
	defer s.gate.mu.Unlock()
	s.gate.open--
	return g.reason
}

// gated is the ADS service as registered: each stream is served by the
// current generation's go-control-plane server.
type gated struct{ s *Server }

func (a gated) StreamAggregatedResources(st grpc.BidiStreamingServer[discovery.DiscoveryRequest, discovery.DiscoveryResponse]) error {
	return serveGated(a.s, st, func(x serverv3.Server) func(grpc.BidiStreamingServer[discovery.DiscoveryRequest, discovery.DiscoveryResponse]) error {
		return x.StreamAggregatedResources
	})
}

func (a gated) DeltaAggregatedResources(st grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]) error {
	return serveGated(a.s, st, func(x serverv3.Server) func(grpc.BidiStreamingServer[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]) error {
		return x.DeltaAggregatedResources
	})
}

// serveGated serves st with the current generation's handler; a stream
// its generation's end cut short ends with Unavailable and the reason.
func serveGated[Req, Res any](s *Server, st grpc.BidiStreamingServer[Req, Res], handler func(serverv3.Server) func(grpc.BidiStreamingServer[Req, Res]) error) error {
	g, err := s.enter()
	if err != nil {
		return err
	}
	err = handler(g.xds)(st)
	if reason := s.leave(g); reason != "" && st.Context().Err() == nil {
		return status.Error(codes.Unavailable, "xdsserver: "+reason)
	}
	return err
}
