package instance

import (
	"context"
	"log/slog"
	"time"

	"github.com/mandate-dev/mandate/cp/fleet"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/etcdstore"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// fleetView is what Status and WaitAcked see: on etcd, every instance's
// replicas (this instance publishes its own under its lease until stop);
// with bbolt, this instance's.
func fleetView(ctx context.Context, sc StoreConfig, be *etcdstore.Backend, xs *xdsserver.Server, logger *slog.Logger) (fleet.View, func(), error) {
	if be == nil {
		v, err := fleet.NewLocal("", xs)
		return v, func() {}, err
	}
	pr, err := fleet.StartPresence(ctx, fleet.PresenceConfig{Client: be.Client(), Prefix: be.Prefix(),
		Instance: sc.InstanceID, TTL: sc.LeaseTTL, Source: xs, Logger: logger})
	if err != nil {
		return nil, nil, err
	}
	return pr, func() {
		if err := pr.Close(); err != nil {
			logger.Warn("fleet presence not removed; it expires with its lease", "error", err)
		}
	}, nil
}

// singletons elects the instance running the fleet's singletons: on
// etcd, by election under the store's prefix on a lease of
// LeaseTTL; with bbolt, this instance.
func singletons(sc StoreConfig, be *etcdstore.Backend, logger *slog.Logger) (*fleet.Singletons, error) {
	var el fleet.Elector = fleet.Always{}
	if be != nil {
		e, err := fleet.NewElection(be.Client(), be.Prefix(), sc.InstanceID, sc.LeaseTTL)
		if err != nil {
			return nil, err
		}
		el = e
	}
	return fleet.NewSingletons(el, logger)
}

// expirySweeper is what sweepStore needs of the store.
type expirySweeper interface {
	SweepExpired(ctx context.Context) (store.SweepResult, error)
}

// sweepStore removes expired task owners, pending step-up requests and
// approval use counts every minute until ctx ends (a singleton).
func sweepStore(ctx context.Context, st expirySweeper, logger *slog.Logger) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			res, err := st.SweepExpired(ctx)
			if err != nil {
				if ctx.Err() == nil {
					logger.Error("expiry sweep failed", "error", err)
				}
				continue
			}
			if res != (store.SweepResult{}) {
				logger.Info("expired records removed", "task_owners", res.Tasks, "pending_approvals", res.Pending, "approval_uses", res.Uses)
			}
		}
	}
}
