package instance

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/mandate-dev/mandate/cp/admin"
	"github.com/mandate-dev/mandate/cp/drift"
	"github.com/mandate-dev/mandate/cp/issuer"
	"github.com/mandate-dev/mandate/cp/issuer/rpcutil"
	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/stepup"
)

// cpServices are the mandate, approval and replica-report services, and
// the singletons they need run on the fleet's leader (key rotation, drift
// counting and actions on etcd).
type cpServices struct {
	issuer     *issuer.Service
	stepup     *stepup.Service
	replicas   *drift.Replicas
	singletons []func(context.Context)
}

func (s *cpServices) register(g *grpc.Server) {
	s.issuer.Register(g)
	s.stepup.Register(g)
	s.replicas.Register(g)
}

// servicesStore is what the mandate services need of the store: signing
// keys, audit and task owners (issuer), pending step-up requests (stepup),
// the fleet's drift queue (drift).
type servicesStore interface {
	issuer.Store
	stepup.PendingStore
	stepup.UseStore
	drift.QueueStore
	drift.Counts
}

// mandateServices builds issuance (with its signing keys, started; the
// rotation is a singleton), step-up approvals and drift detection (on
// etcd, replicas' reports go to the fleet's queue and the leader counts
// them).
func mandateServices(ctx context.Context, c *Config, files configFiles, pl *plane.Plane, st servicesStore, auth *admin.Auth,
	logger *slog.Logger, reg prometheus.Registerer) (*cpServices, error) {
	cpID := "spiffe://" + c.TrustDomain + "/mandate/cp"
	identify := func(ctx context.Context) (string, error) { return rpcutil.Identify(ctx, c.Plaintext) }
	operator := func(ctx context.Context) (string, error) {
		p, err := admin.PeerOf(ctx)
		if err != nil {
			return "", err
		}
		if err := auth.Authorize(p); err != nil {
			return "", err
		}
		return p.Actor, nil
	}
	is, err := issuer.New(issuer.Config{
		Plane: pl, Store: st, Policy: files.issuance, Issuer: cpID, MaxTTL: c.MandateMaxTTL, MaxDepth: c.DelegationMaxDepth,
		Rotation: c.KeyRotation, Overlap: c.KeyOverlap, Identify: identify, Operator: operator, Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	if err := is.Start(ctx); err != nil {
		return nil, err
	}
	singletons := []func(context.Context){func(ctx context.Context) {
		if err := is.Run(ctx); err != nil && ctx.Err() == nil {
			logger.Error("key rotation stopped", "error", err)
		}
	}}
	su, err := stepup.New(stepup.Config{Plane: pl, Operator: operator, Window: c.ApprovalWindow, Logger: logger, Store: st, Uses: st})
	if err != nil {
		return nil, err
	}
	// Pending step-up requests survive a restart.
	if err := su.Load(ctx); err != nil {
		return nil, err
	}
	// Counts in the store: the next leader (etcd) or the next start
	// (bbolt) continues counting.
	dd, err := drift.New(drift.Config{Plane: pl, Rules: files.drift, Actor: cpID, Logger: logger,
		MaxActions: c.DriftMaxActions, Registerer: reg, Counts: st})
	if err != nil {
		return nil, err
	}
	var sink drift.Sink = dd
	if c.Store.etcd() {
		q, err := drift.NewQueue(st, c.Store.InstanceID, logger)
		if err != nil {
			return nil, err
		}
		sink = q
		singletons = append(singletons, func(ctx context.Context) { q.Drain(ctx, dd, 0) })
	}
	rp, err := drift.NewReplicas(drift.ReplicasConfig{
		Identify: identify, Replicas: c.ReplicaIDs, AllowPlaintext: c.Plaintext,
		Drift: sink, StepUps: su, Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	return &cpServices{issuer: is, stepup: su, replicas: rp, singletons: singletons}, nil
}
