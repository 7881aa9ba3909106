package replica

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/authz/report"
	"github.com/mandate-dev/mandate/internal/lifecycle"
	"github.com/mandate-dev/mandate/internal/transport"
	xdsclient "github.com/mandate-dev/mandate/xds/client"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// followControlPlane prepares the replica to follow the control plane:
// every validated push is installed before it is ACKed. Nothing is
// installed until every resource type has synced once, so a replica
// never allows on a partial view (it is not ready and denies until
// then). The client and the reporter run in Run's group.
func (r *Replica) followControlPlane(ctx context.Context, acfg *authz.Config, reg prometheus.Registerer) error {
	c := &r.cfg
	sctx, scancel := r.svidCtx(ctx)
	dialOpt, src, err := transport.DialOption(sctx, c.XDSServers[0], transport.Config{
		WorkloadAPI: c.WorkloadAPI, Allowed: c.ControlPlaneIDs, Insecure: c.Plaintext,
	})
	scancel()
	if err != nil {
		return err
	}
	r.opened.Push(func() { _ = src.Close() })
	for _, addr := range c.XDSServers[1:] {
		if c.Plaintext {
			if err := transport.CheckLoopback(addr); err != nil {
				return fmt.Errorf("xds server: %w", err)
			}
		}
	}
	conns, conn, err := dialControlPlane(c.XDSServers, dialOpt)
	if err != nil {
		return fmt.Errorf("xds server: %w", err)
	}
	r.opened.Push(func() {
		for _, c := range conns {
			_ = c.Close()
		}
		if len(conns) > 1 {
			_ = conn.Close()
		}
	})
	// Drift and step-up events go to the control plane batched off the
	// request path (with one instance, over the xDS connection).
	rep, err := report.New(report.Config{Conn: conn, Registerer: reg, Logger: r.log})
	if err != nil {
		return err
	}
	acfg.OnOutOfIntent = rep.OnOutOfIntent
	acfg.OnStepUp = rep.OnStepUp
	acfg.ClaimApproval = rep.ClaimApproval

	var synced atomic.Bool
	xconns := make([]grpc.ClientConnInterface, len(conns))
	for i, cc := range conns {
		xconns[i] = cc
	}
	client, err := xdsclient.New(xdsclient.Config{
		Conns:      xconns,
		ConnNames:  c.XDSServers,
		NodeID:     c.NodeID,
		Logger:     r.log,
		Registerer: reg,
		Heartbeat:  c.StaleBudget / 3,
		Apply: func(s xdsclient.State) error {
			if n := s.Policies.Len(); c.MaxRules > 0 && n > c.MaxRules {
				return fmt.Errorf("policy set has %d rules, this replica accepts at most %d (--max-rules)", n, c.MaxRules)
			}
			keys, err := verificationKeys(s.Keys)
			if err != nil {
				return err
			}
			if err := r.verifier.SetKeys(keys); err != nil {
				return err
			}
			if len(s.Versions) < len(mandatev1.TypeURLs()) {
				// Partial view: keep denying until every type is in.
				return nil
			}
			approvals := authz.NewApprovalSet(approvalsOf(s.Approvals))
			r.state.Update(func(st *authz.State) {
				st.Policies, st.Revocations, st.Approvals = s.Policies, s.Revocations, approvals
			})
			if !synced.Swap(true) {
				r.log.Info("synced with the control plane", "node_id", c.NodeID, "versions", s.Versions)
			}
			r.refreshHealth()
			return nil
		},
	})
	if err != nil {
		return err
	}
	r.opened.Push(func() { _ = client.Close() })
	r.stale = &staleness{c: client, budget: c.StaleBudget, now: time.Now}
	acfg.Staleness = r.stale
	r.parts = append(r.parts, lifecycle.Part{Name: "xds client", Run: client.Run}, lifecycle.Part{Name: "reporter", Run: func(ctx context.Context) error {
		if err := rep.Run(ctx); err != nil && ctx.Err() == nil {
			r.log.Error("reporter stopped", "error", err)
		}
		return nil
	}})
	return nil
}

// dialControlPlane returns one connection per control-plane instance
// (the xDS client holds one stream at a time and moves between them) and
// the connection the reporter uses: the only one with one instance, else
// one over every address that connects to the first instance that
// answers (gRPC pick_first).
func dialControlPlane(addrs []string, dialOpt grpc.DialOption) ([]*grpc.ClientConn, *grpc.ClientConn, error) {
	var conns []*grpc.ClientConn
	fail := func(err error) ([]*grpc.ClientConn, *grpc.ClientConn, error) {
		for _, c := range conns {
			_ = c.Close()
		}
		return nil, nil, err
	}
	for _, a := range addrs {
		cc, err := grpc.NewClient(a, append(xdsclient.TransportOptions(), dialOpt)...)
		if err != nil {
			return fail(err)
		}
		conns = append(conns, cc)
	}
	if len(conns) == 1 {
		return conns, conns[0], nil
	}
	r := manual.NewBuilderWithScheme("mandate-cp")
	state := resolver.State{}
	for _, a := range addrs {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	rc, err := grpc.NewClient(r.Scheme()+":///control-plane", append(xdsclient.TransportOptions(), dialOpt, grpc.WithResolvers(r))...)
	if err != nil {
		return fail(err)
	}
	return conns, rc, nil
}

// staleness reports a replica cut off from the control plane for longer
// than its budget.
type staleness struct {
	c      *xdsclient.Client
	budget time.Duration
	now    func() time.Time
}

func (s *staleness) Stale() bool {
	last := s.c.LastContact()
	return !last.IsZero() && s.now().Sub(last) > s.budget
}

func verificationKeys(in []*mandatev1.VerificationKey) ([]mandate.Key, error) {
	out := make([]mandate.Key, 0, len(in))
	for _, k := range in {
		if k.GetAlgorithm() != "EdDSA" {
			return nil, fmt.Errorf("verification key %s: algorithm %q, want EdDSA", k.GetName(), k.GetAlgorithm())
		}
		key := mandate.Key{ID: k.GetName(), Public: k.GetPublicKey()}
		if t := k.GetNotBefore(); t != nil {
			key.NotBefore = t.AsTime()
		}
		if t := k.GetNotAfter(); t != nil {
			key.NotAfter = t.AsTime()
		}
		out = append(out, key)
	}
	return out, nil
}

func approvalsOf(in []*mandatev1.Approval) []authz.Approval {
	out := make([]authz.Approval, 0, len(in))
	for _, a := range in {
		out = append(out, authz.Approval{
			ID: a.GetName(), Subject: a.GetSubject(), Task: a.GetTask(), Method: a.GetMethod(),
			Path: a.GetPath(), GRPC: a.GetGrpc(), Policy: a.GetPolicy(), Rule: a.GetRule(),
			Expires: a.GetExpires().AsTime(),
		})
	}
	return out
}
