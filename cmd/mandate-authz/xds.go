package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/mandate"
)

// startXDS connects to the control plane. Wired once the xDS client lands.
func startXDS(ctx context.Context, o *options, store *authz.StateStore, verifier *mandate.Verifier, cfg *authz.Config,
	reg prometheus.Registerer, logger *slog.Logger, onApply func(), errc chan<- error) (authz.Staleness, error) {
	return nil, errors.New("--xds-server: control plane mode is not available in this build")
}
