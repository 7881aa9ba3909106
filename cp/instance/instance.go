// Package instance assembles one mandate-cp instance from a Config: the
// store (bbolt, or etcd shared with other instances), the xDS server and
// the plane in front of it, the Admin and Mandates APIs, the ops HTTP
// endpoints, the Envoy directory, and the work that runs on the fleet's
// leader. New builds and checks everything and binds the listeners; Run
// serves until its context ends or a part fails, under one lifecycle
// group, and releases everything New opened.
package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mandate-dev/mandate/cp/envoydir"
	"github.com/mandate-dev/mandate/cp/issuer"
	"github.com/mandate-dev/mandate/cp/plane"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/internal/cmdutil"
	"github.com/mandate-dev/mandate/internal/lifecycle"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// Instance is an assembled mandate-cp. Build it with New, then call Run
// once; Reload is the only method safe to call while it runs.
type Instance struct {
	cfg   Config
	log   *slog.Logger
	envoy *envoydir.Loader // nil without an Envoy directory
	// envoyWatched is closed once the Envoy directory is watched.
	envoyWatched chan struct{}
	issuer       *issuer.Service

	servers   []lifecycle.Server // bound, stopped in this order
	parts     []lifecycle.Part
	addrs     map[string]string
	listeners map[string]net.Listener // by name in addrs (tests close them)
	opened    lifecycle.Stack
	started   atomic.Bool
}

// New builds an instance: it checks cfg and the configuration files it
// names (before opening anything), opens the store, loads the state and
// publishes it, starts the mandate services, and binds the listeners. On
// error everything it opened is released. ctx bounds the startup and,
// on etcd, is the etcd client's context (pass Run's: once it ends the
// client stops); reg receives the instance's metrics and is what
// /metrics serves.
func New(ctx context.Context, cfg Config, logger *slog.Logger, reg *prometheus.Registry) (_ *Instance, err error) {
	if logger == nil || reg == nil {
		return nil, errors.New("instance: logger and registry are required")
	}
	in := &Instance{cfg: cfg.clone(), log: logger, addrs: map[string]string{}, listeners: map[string]net.Listener{}}
	defer func() {
		if err != nil {
			in.Close()
			err = fmt.Errorf("instance: %w", err)
		}
	}()
	c := &in.cfg
	if err := c.validate(); err != nil {
		return nil, err
	}
	// Configuration files first: a mistake in one is reported before
	// anything is opened or bound.
	files, err := loadConfigFiles(c)
	if err != nil {
		return nil, err
	}
	st, be, err := openStore(ctx, c.Store, logger)
	if err != nil {
		return nil, err
	}
	in.opened.Push(func() {
		if err := st.Close(); err != nil {
			logger.Error("closing the store", "error", err)
		}
	})
	xopts, err := plane.ServerOptions(ctx, st)
	if err != nil {
		return nil, err
	}
	kinds, err := peerKinds(c.ReplicaIDs, c.EnvoyIDs)
	if err != nil {
		return nil, err
	}
	xs, err := xdsserver.New(logger, slices.Concat(xopts, []xdsserver.Option{kinds, xdsserver.WithRegisterer(reg)})...)
	if err != nil {
		return nil, err
	}
	in.opened.Push(xs.Close)
	// The fleet's presence, like the etcd client, ends with ctx or Close.
	view, stopFleet, err := fleetView(ctx, c.Store, be, xs, logger)
	if err != nil {
		return nil, err
	}
	in.opened.Push(stopFleet)
	pl, err := plane.New(ctx, st, xs, logger, plane.WithRegisterer(reg), plane.WithFleet(view),
		plane.WithRevocationRetention(c.RevocationRetention),
		plane.WithAuditRetention(store.AuditRetention{MaxAge: c.AuditMaxAge, MaxEntries: c.AuditMaxEntries}))
	if err != nil {
		return nil, err
	}
	in.opened.Push(pl.Close)
	if be != nil {
		// Losing etcd: writes fail at once (the backend's probe); after
		// the grace the xDS streams close so replicas move on.
		in.parts = append(in.parts, lifecycle.Part{Name: "etcd guard", Run: func(ctx context.Context) error {
			guardEtcd(ctx, be, xs, c.Store.EtcdGrace, logger)
			return nil
		}})
	}
	// Envoy listeners and clusters go through the plane, which records
	// when each version was committed (the lag `mandatectl status` shows).
	if err := in.envoyDir(pl, reg); err != nil {
		return nil, err
	}
	services, err := in.serve(ctx, xs, pl, st, files, reg)
	if err != nil {
		return nil, err
	}
	in.issuer = services.issuer
	// The singletons (key rotation, sweeps, drift counting on etcd) run
	// on the fleet's elected leader: always this instance with bbolt.
	sg, err := singletons(c.Store, be, logger)
	if err != nil {
		return nil, err
	}
	in.parts = append(in.parts, lifecycle.Part{Name: "singletons", Run: func(ctx context.Context) error {
		sg.Run(ctx, append(services.singletons, pl.RunSweeper, func(ctx context.Context) { sweepStore(ctx, st, logger) })...)
		return nil
	}})
	return in, nil
}

// envoyDir loads the Envoy directory (refusing to start on an invalid or
// unsafe set) and adds its watch to the parts. Without one it does
// nothing.
func (in *Instance) envoyDir(to envoydir.Setter, reg prometheus.Registerer) error {
	c := &in.cfg
	if c.EnvoyDir == "" {
		if len(c.EnvoyIDs) > 0 {
			in.log.Warn("--envoy-id without --envoy-dir: Envoys may connect but get no listeners or clusters")
		}
		return nil
	}
	if len(c.EnvoyIDs) == 0 {
		in.log.Warn("--envoy-dir without --envoy-id: only plaintext (development) Envoys can connect")
	}
	l, err := envoydir.New(c.EnvoyDir, to, in.log, reg)
	if err != nil {
		return err
	}
	if err := l.Load(); err != nil {
		in.log.Error("--envoy-dir refused", "dir", c.EnvoyDir, "error", err)
		return fmt.Errorf("envoy dir: %w", err)
	}
	in.envoy, in.envoyWatched = l, make(chan struct{})
	in.parts = append(in.parts, lifecycle.Part{Name: "envoy dir", Run: func(ctx context.Context) error {
		return l.Watch(ctx, c.EnvoyDebounce, in.envoyWatched)
	}})
	return nil
}

// Addrs returns the bound addresses: "xds", and "admin", "socket" and
// "metrics" when served.
func (in *Instance) Addrs() map[string]string {
	out := make(map[string]string, len(in.addrs))
	for k, v := range in.addrs {
		out[k] = v
	}
	return out
}

// Reload re-reads what can change without a restart: the Envoy
// directory and the issuance policy. A file that fails to load changes
// nothing (the set in force stays, and the failure is logged). Safe to
// call at any time, from any goroutine.
func (in *Instance) Reload() {
	c := &in.cfg
	if in.envoy != nil {
		in.log.Info("SIGHUP: reloading the Envoy directory", "dir", c.EnvoyDir)
		in.envoy.Reload("SIGHUP")
	}
	if c.IssuancePolicy != "" {
		reloadIssuance(c.IssuancePolicy, in.issuer, in.log)
	}
	if in.envoy == nil && c.IssuancePolicy == "" {
		in.log.Info("SIGHUP: nothing to reload (no --envoy-dir or --issuance-policy; other settings need a restart)")
	}
}

// Run serves until ctx ends (nil) or a part fails (its error): the xDS
// server, the Admin API (listener and socket), the ops endpoints, the
// etcd guard, the Envoy directory's watch and the leader's singletons
// run in one group; on the way out the servers stop in that order
// (replicas' streams first). Everything New opened is released when Run
// returns. Run may be called once.
func (in *Instance) Run(ctx context.Context) error {
	if !in.started.CompareAndSwap(false, true) {
		return errors.New("instance: Run called twice")
	}
	defer in.Close()
	gctx, end := context.WithCancel(ctx)
	defer end()
	grp := lifecycle.New(gctx)
	grp.Start(in.parts, in.servers)
	if err := in.announce(grp.Context()); err != nil {
		end()
		_ = grp.Wait()
		return fmt.Errorf("instance: %w", err)
	}
	in.log.Info("mandate-cp serving", "addrs", in.addrs, "mtls", !in.cfg.Plaintext, "data_dir", in.cfg.Store.DataDir,
		"operators", in.cfg.Operators, "replicas", in.cfg.ReplicaIDs)
	grp.Go("shutdown", func(ctx context.Context) error {
		<-ctx.Done()
		in.log.Info("shutting down")
		return nil
	})
	if err := grp.Wait(); err != nil {
		in.log.Error("server failed", "error", err)
		return err
	}
	return nil
}

// announce writes the address file once every part serves what it
// should (the Envoy directory is watched, so a change made after the
// file appeared is seen), unless ctx ends first.
func (in *Instance) announce(ctx context.Context) error {
	if in.envoyWatched != nil {
		select {
		case <-in.envoyWatched:
		case <-ctx.Done():
			return nil
		}
	}
	if in.cfg.AddrFile == "" {
		return nil
	}
	return cmdutil.WriteAddrFile(in.cfg.AddrFile, in.addrs)
}

// Close releases what New opened, last opened first. Run does it when it
// returns; call Close only for an instance that never runs. It is safe
// to call more than once.
func (in *Instance) Close() { in.opened.Release() }
