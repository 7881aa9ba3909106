package xdsserver

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/mandate-dev/mandate/internal/transport"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

const (
	maxNodeIDLen    = 512
	maxNackErrLen   = 2048
	maxOpenNonces   = 64
	unknownNodeNote = "xdsserver: the first request of a stream must carry node.id"
)

// callbacks are generation gen's: go-control-plane numbers the streams
// of each of its servers from 1.
func (s *Server) callbacks(gen uint64) serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			return s.openStream(ctx, streamKey{gen: gen, delta: false, id: id})
		},
		StreamClosedFunc: func(id int64, _ *core.Node) { s.closeStream(streamKey{gen: gen, delta: false, id: id}) },
		StreamRequestFunc: func(id int64, r *discovery.DiscoveryRequest) error {
			return s.onRequest(streamKey{gen: gen, delta: false, id: id}, r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail())
		},
		StreamResponseFunc: func(_ context.Context, id int64, r *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			resp.VersionInfo = s.onResponse(streamKey{gen: gen, delta: false, id: id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetVersionInfo())
		},
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			return s.openStream(ctx, streamKey{gen: gen, delta: true, id: id})
		},
		DeltaStreamClosedFunc: func(id int64, _ *core.Node) { s.closeStream(streamKey{gen: gen, delta: true, id: id}) },
		StreamDeltaRequestFunc: func(id int64, r *discovery.DeltaDiscoveryRequest) error {
			return s.onRequest(streamKey{gen: gen, delta: true, id: id}, r.GetNode(), r.GetTypeUrl(), r.GetResponseNonce(), r.GetErrorDetail())
		},
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			resp.SystemVersionInfo = s.onResponse(streamKey{gen: gen, delta: true, id: id}, resp.GetTypeUrl(), resp.GetNonce(), resp.GetSystemVersionInfo())
		},
		FetchRequestFunc: func(context.Context, *discovery.DiscoveryRequest) error {
			return status.Error(codes.Unimplemented, "xdsserver: REST fetch is not served")
		},
	}
}

func (s *Server) openStream(ctx context.Context, k streamKey) error {
	kind := NodeUnknown
	if s.peerKind != nil {
		var err error
		if kind, err = s.peerKind(ctx); err != nil {
			s.log.Warn("xds stream refused", "error", err)
			return status.Errorf(codes.PermissionDenied, "xdsserver: %v", err)
		}
	}
	id, err := peerIdentity(ctx)
	if err != nil {
		s.log.Warn("xds stream refused", "error", err)
		return status.Errorf(codes.PermissionDenied, "xdsserver: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[k] = &streamState{kind: kind, peer: id, nonces: map[string]sent{},
		acked: map[string]uint64{}, nacked: map[string]streamNack{}}
	return nil
}

// peerIdentity is the identity the transport proved for the peer of ctx:
// the SPIFFE ID of its client certificate over TLS, "" over a plaintext
// (development) transport. A TLS peer without a SPIFFE ID proven by the
// server's go-spiffe credentials (transport.PeerID) is refused.
func peerIdentity(ctx context.Context) (string, error) {
	if _, ok := peer.FromContext(ctx); !ok {
		return "", nil
	}
	id, err := transport.PeerID(ctx)
	if errors.Is(err, transport.ErrNotMTLS) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return id.String(), nil
}

func (s *Server) closeStream(k streamKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[k]
	delete(s.streams, k)
	if st == nil || st.node == "" {
		return
	}
	if n := s.nodes[st.node]; n != nil {
		n.streams--
		if n.streams <= 0 {
			n.streams = 0
			n.disconnectedAt = s.now()
			s.log.Info("xds node disconnected", "node", st.node, "kind", n.kind)
		}
	}
	s.updateConnectedLocked()
	s.streamsChangedLocked()
	s.notifyLocked()
}

func (s *Server) updateConnectedLocked() {
	c := map[NodeKind]int{}
	for _, n := range s.nodes {
		if n.streams > 0 {
			c[n.kind]++
		}
	}
	s.m.connected.Set(float64(c[NodeReplica]))
	s.m.envoys.Set(float64(c[NodeEnvoy]))
}

func validNodeID(id string) bool {
	if id == "" || len(id) > maxNodeIDLen || !utf8.ValidString(id) {
		return false
	}
	for _, r := range id {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func (s *Server) onRequest(k streamKey, node *core.Node, typeURL, nonce string, detail *rpcstatus.Status) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[k]
	if st == nil {
		return nil
	}
	now := s.now()
	want := KindOf(typeURL)
	if typeURL != "" && want == NodeUnknown {
		return status.Errorf(codes.InvalidArgument, "xdsserver: type %q is not served", typeURL)
	}
	if st.kind == NodeUnknown {
		if want == NodeUnknown {
			return status.Error(codes.InvalidArgument, "xdsserver: the first request of a stream must carry a type_url")
		}
		st.kind = want
	}
	if want != NodeUnknown && want != st.kind {
		return status.Errorf(codes.PermissionDenied, "xdsserver: a %s may not fetch %s", st.kind, shortType(typeURL))
	}
	if st.node == "" {
		id := node.GetId()
		if !validNodeID(id) {
			return status.Error(codes.InvalidArgument, unknownNodeNote)
		}
		n := s.nodes[id]
		if n != nil && n.streams > 0 && n.kind != st.kind {
			return status.Errorf(codes.PermissionDenied, "xdsserver: node id %q is connected as a %s", id, n.kind)
		}
		if n != nil && n.peer != st.peer {
			// The node id is bound to the peer that first used it, for
			// as long as the node is known: another peer reusing it
			// could otherwise ACK (or NACK) in its name.
			s.log.Warn("xds stream refused: node id bound to another peer", "node", id, "peer", st.peer, "bound", n.peer)
			return status.Errorf(codes.PermissionDenied, "xdsserver: node id %q belongs to another peer", id)
		}
		st.node = id
		if n == nil {
			// Node ids are the peer's choice: forget the retained
			// disconnected ones before remembering another.
			s.pruneLocked()
			n = &nodeState{peer: st.peer, types: map[string]*nodeType{}}
			s.nodes[id] = n
		}
		if n.kind != st.kind { // a new node, or a retained one that comes back as another kind
			n.kind, n.types = st.kind, map[string]*nodeType{}
		}
		if n.streams == 0 {
			n.connectedSince = now
			s.log.Info("xds node connected", "node", id, "kind", n.kind, "delta", k.delta)
		}
		n.streams++
		s.updateConnectedLocked()
		s.streamsChangedLocked()
		s.notifyLocked()
	}
	n := s.nodes[st.node]
	if n == nil { // pruned cannot happen while a stream is open; be safe
		return nil
	}
	n.lastSeen = now
	if nonce == "" {
		return nil
	}
	sn, ok := st.nonces[nonce]
	if !ok || sn.typeURL != typeURL {
		return nil // stale or foreign nonce: not an answer to a response we track
	}
	// Answers come in order per type: forget this and older nonces.
	seq, _ := strconv.ParseUint(nonce, 10, 64)
	for k2, v := range st.nonces {
		if v.typeURL == typeURL && v.seq <= seq {
			delete(st.nonces, k2)
		}
	}
	nt := n.typeLocked(typeURL)
	if detail == nil && sn.partial {
		// A chunk of a split delta received: the version is ACKed with
		// the last chunk.
		return nil
	}
	if detail == nil {
		if v, ok := st.acked[typeURL]; !ok || sn.version > v {
			st.acked[typeURL] = sn.version
			st.ackedLocked(typeURL, sn.version)
		}
		if nk, ok := st.nacked[typeURL]; ok && nk.version <= st.acked[typeURL] {
			delete(st.nacked, typeURL)
		}
		if !nt.hasAck || sn.version > nt.acked {
			if ts := s.types[typeURL]; ts != nil {
				if t, ok := ts.setAt[sn.version]; ok {
					ts.propagation.Observe(now.Sub(t).Seconds())
				}
			}
			nt.acked, nt.hasAck, nt.ackedAt = sn.version, true, now
		}
		if nt.hasNack && nt.nacked <= nt.acked {
			nt.hasNack, nt.nackErr = false, ""
		}
	} else {
		msg := detail.GetMessage()
		if len(msg) > maxNackErrLen {
			msg = msg[:maxNackErrLen]
		}
		nt.nacked, nt.hasNack, nt.nackedAt, nt.nackErr = sn.version, true, now, msg
		st.nacked[typeURL] = streamNack{version: sn.version, msg: msg}
		st.nackedLocked(typeURL)
		s.types[typeURL].nacks.Inc()
		s.log.Warn("xds node rejected resources", "node", st.node, "kind", n.kind, "type", shortType(typeURL),
			"version", sn.version, "error", msg)
	}
	s.notifyLocked()
	return nil
}

// onResponse records a response about to be sent and returns the version
// to put in it (the version the cache version stands for).
func (s *Server) onResponse(k streamKey, typeURL, nonce, cacheVersion string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ts := s.types[typeURL]
	if ts == nil {
		return cacheVersion
	}
	cacheVersion, partial := strings.CutSuffix(cacheVersion, mandatev1.PartialVersionSuffix)
	cv, err := strconv.ParseUint(cacheVersion, 10, 64)
	if err != nil {
		s.log.Error("xds cache produced a non-numeric version", "type", shortType(typeURL), "version", cacheVersion)
		return cacheVersion
	}
	e, ok := ts.ext[cv]
	if !ok {
		s.log.Error("xds cache version out of the version history", "type", shortType(typeURL), "version", cacheVersion)
		return cacheVersion
	}
	ts.pushes.Inc()
	v, out := e.v, e.text
	if partial {
		out += mandatev1.PartialVersionSuffix
	}
	st := s.streams[k]
	if st == nil {
		return out
	}
	seq, _ := strconv.ParseUint(nonce, 10, 64)
	st.nonces[nonce] = sent{typeURL: typeURL, version: v, seq: seq, partial: partial}
	if len(st.nonces) > maxOpenNonces {
		var oldest string
		var min uint64 = ^uint64(0)
		for k2, x := range st.nonces {
			if x.seq < min {
				oldest, min = k2, x.seq
			}
		}
		delete(st.nonces, oldest)
	}
	if n := s.nodes[st.node]; n != nil && !partial {
		n.typeLocked(typeURL).sent = v
	}
	return out
}

func (n *nodeState) typeLocked(typeURL string) *nodeType {
	nt := n.types[typeURL]
	if nt == nil {
		nt = &nodeType{}
		n.types[typeURL] = nt
	}
	return nt
}
