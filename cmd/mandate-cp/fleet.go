package main

import (
	"context"
	"log/slog"

	"github.com/mandate-dev/mandate/cp/fleet"
	"github.com/mandate-dev/mandate/cp/store/etcdstore"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// fleetView is what Status and WaitAcked see: on etcd, every instance's
// replicas (this instance publishes its own under its lease until stop);
// with bbolt, this instance's.
func fleetView(ctx context.Context, so storeOptions, be *etcdstore.Backend, xs *xdsserver.Server, logger *slog.Logger) (fleet.View, func(), error) {
	if be == nil {
		v, err := fleet.NewLocal("", xs)
		return v, func() {}, err
	}
	pr, err := fleet.StartPresence(ctx, fleet.PresenceConfig{Client: be.Client(), Prefix: be.Prefix(),
		Instance: so.instance(), TTL: so.leaseTTL, Source: xs, Logger: logger})
	if err != nil {
		return nil, nil, err
	}
	return pr, func() {
		if err := pr.Close(); err != nil {
			logger.Warn("fleet presence not removed; it expires with its lease", "error", err)
		}
	}, nil
}
