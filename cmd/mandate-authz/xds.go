package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
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

// startXDS follows the control plane: every validated push is installed
// in store before it is ACKed. Nothing is installed until every resource
// type has synced once, so a replica never allows on a partial view (it
// is not ready and denies until then).
func startXDS(ctx context.Context, o *options, store *authz.StateStore, verifier *mandate.Verifier, cfg *authz.Config,
	reg prometheus.Registerer, logger *slog.Logger, onApply func(), grp *lifecycle.Group) error {
	cpIDs := []string(o.cpIDs)
	if len(cpIDs) == 0 {
		cpIDs = []string{"spiffe://" + o.trustDomains[0] + "/mandate/cp"}
	}
	sctx, scancel := svidCtx(ctx, o, logger)
	dialOpt, src, err := transport.DialOption(sctx, o.xdsServers[0], transport.Config{
		WorkloadAPI: o.workloadAPI, Allowed: cpIDs, Insecure: o.plaintext,
	})
	scancel()
	if err != nil {
		return err
	}
	for _, addr := range o.xdsServers[1:] {
		if o.plaintext {
			if err := transport.CheckLoopback(addr); err != nil {
				return fmt.Errorf("--xds-server: %w", err)
			}
		}
	}
	nodeID := o.nodeID
	if nodeID == "" {
		host, _ := os.Hostname()
		nodeID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	conns, conn, err := dialControlPlane(o.xdsServers, dialOpt)
	if err != nil {
		_ = src.Close()
		return fmt.Errorf("--xds-server: %w", err)
	}
	closeConns := func() {
		for _, c := range conns {
			_ = c.Close()
		}
		if len(conns) > 1 {
			_ = conn.Close()
		}
	}
	// Drift and step-up events go to the control plane batched off the
	// request path (with one instance, over the xDS connection).
	rep, err := report.New(report.Config{Conn: conn, Registerer: reg, Logger: logger})
	if err != nil {
		closeConns()
		_ = src.Close()
		return err
	}
	cfg.OnOutOfIntent = rep.OnOutOfIntent
	cfg.OnStepUp = rep.OnStepUp
	cfg.ClaimApproval = rep.ClaimApproval
	go func() {
		if err := rep.Run(ctx); err != nil && ctx.Err() == nil {
			logger.Error("reporter stopped", "error", err)
		}
	}()

	var synced atomic.Bool
	xconns := make([]grpc.ClientConnInterface, len(conns))
	for i, c := range conns {
		xconns[i] = c
	}
	c, err := xdsclient.New(xdsclient.Config{
		Conns:      xconns,
		ConnNames:  o.xdsServers,
		NodeID:     nodeID,
		Logger:     logger,
		Registerer: reg,
		Heartbeat:  o.staleBudget / 3,
		Apply: func(s xdsclient.State) error {
			if n := s.Policies.Len(); o.maxRules > 0 && n > o.maxRules {
				return fmt.Errorf("policy set has %d rules, this replica accepts at most %d (--max-rules)", n, o.maxRules)
			}
			keys, err := verificationKeys(s.Keys)
			if err != nil {
				return err
			}
			if err := verifier.SetKeys(keys); err != nil {
				return err
			}
			if len(s.Versions) < len(mandatev1.TypeURLs()) {
				// Partial view: keep denying until every type is in.
				return nil
			}
			approvals := authz.NewApprovalSet(approvalsOf(s.Approvals))
			store.Update(func(st *authz.State) {
				st.Policies, st.Revocations, st.Approvals = s.Policies, s.Revocations, approvals
			})
			if !synced.Swap(true) {
				logger.Info("synced with the control plane", "node_id", nodeID, "versions", s.Versions)
			}
			onApply()
			return nil
		},
	})
	if err != nil {
		closeConns()
		_ = src.Close()
		return err
	}
	// Set before the client runs: its Apply callback reads cfg (through
	// the readiness check) from the client's goroutine.
	cfg.Staleness = &staleness{c: c, budget: o.staleBudget, now: time.Now}
	grp.Go("xds client", func(ctx context.Context) error {
		err := c.Run(ctx)
		_ = c.Close()
		closeConns()
		_ = src.Close()
		return err
	})
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
		cc, err := grpc.NewClient(a, dialOpt)
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
	rc, err := grpc.NewClient(r.Scheme()+":///control-plane", dialOpt, grpc.WithResolvers(r))
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
