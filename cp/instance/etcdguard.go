package instance

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/mandate-dev/mandate/cp/store/etcdstore"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// guardEtcd suspends the xDS server once etcd has been out of reach (or
// without quorum) for longer than grace, and resumes it as soon as etcd
// answers again, until ctx ends. Writes do not wait for the grace: the
// backend refuses them from the first failed probe.
func guardEtcd(ctx context.Context, be *etcdstore.Backend, xs *xdsserver.Server, grace time.Duration, logger *slog.Logger) {
	for {
		h := be.Health()
		var timer *time.Timer
		wake := make(<-chan time.Time)
		switch {
		case h.Err == nil:
			xs.Resume()
		case time.Since(h.Since) >= grace:
			xs.Suspend(fmt.Sprintf("etcd unavailable for more than %v: %v", grace, h.Err))
		default:
			logger.Warn("etcd unavailable: writes refused; xDS streams close if it lasts", "error", h.Err, "grace", grace)
			timer = time.NewTimer(grace - time.Since(h.Since))
			wake = timer.C
		}
		select {
		case <-ctx.Done():
		case <-h.Changed:
		case <-wake:
		}
		if timer != nil {
			timer.Stop()
		}
		if ctx.Err() != nil {
			return
		}
	}
}
