// Command etcdserver is a minimal etcd member for Mandate's tests: etcd's
// own server (go.etcd.io/etcd/server/v3/embed) behind a few flags. It lives
// in its own module so that the main module does not inherit the etcd
// server's dependencies; e2e/etcd-install.sh builds it at a pinned version
// into a cache outside the repository.
//
// It prints "etcdserver: ready" on stdout once the member serves clients,
// and stops cleanly on SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "etcdserver:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		name       = flag.String("name", "default", "member name")
		dir        = flag.String("data-dir", "", "data directory (required)")
		clientURL  = flag.String("client-url", "", "URL to serve clients on, e.g. http://127.0.0.1:2379 (required)")
		peerURL    = flag.String("peer-url", "", "URL to serve peers on, e.g. http://127.0.0.1:2380 (required)")
		cluster    = flag.String("initial-cluster", "", "name=peer-url,... of every member (default: this member alone)")
		state      = flag.String("initial-cluster-state", embed.ClusterStateFlagNew, "new or existing")
		token      = flag.String("initial-cluster-token", "mandate-test", "cluster token")
		maxTxnOps  = flag.Uint("max-txn-ops", 20000, "most operations in one transaction")
		maxReq     = flag.Uint("max-request-bytes", 32<<20, "largest request in bytes")
		tickMs     = flag.Uint("heartbeat-ms", 50, "raft heartbeat interval")
		electionMs = flag.Uint("election-ms", 500, "raft election timeout")
		logLevel   = flag.String("log-level", "warn", "debug, info, warn or error")
		startWait  = flag.Duration("start-timeout", time.Minute, "how long to wait for the member to serve")
	)
	flag.Parse()
	if *dir == "" || *clientURL == "" || *peerURL == "" {
		return fmt.Errorf("-data-dir, -client-url and -peer-url are required")
	}
	cu, err := url.Parse(*clientURL)
	if err != nil {
		return fmt.Errorf("client url: %w", err)
	}
	pu, err := url.Parse(*peerURL)
	if err != nil {
		return fmt.Errorf("peer url: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = *name
	cfg.Dir = *dir
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = *cluster
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = *name + "=" + pu.String()
	}
	cfg.ClusterState = *state
	cfg.InitialClusterToken = *token
	cfg.MaxTxnOps = *maxTxnOps
	cfg.MaxRequestBytes = *maxReq
	cfg.TickMs, cfg.ElectionMs = *tickMs, *electionMs
	cfg.LogLevel = *logLevel
	cfg.Logger = "zap"
	cfg.LogOutputs = []string{"stderr"}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	defer e.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	select {
	case <-e.Server.ReadyNotify():
		fmt.Println("etcdserver: ready")
	case <-time.After(*startWait):
		return fmt.Errorf("member did not become ready within %v", *startWait)
	case <-ctx.Done():
		return nil
	}
	select {
	case err := <-e.Err():
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
		return nil
	}
}
