package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"time"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
	"github.com/mandate-dev/mandate/cp/store/etcdstore"
	"github.com/mandate-dev/mandate/internal/cmdutil"
)

// storeOptions choose and configure the durable store.
type storeOptions struct {
	kekFile                   string
	etcd                      cmdutil.List
	etcdPrefix                string
	etcdCA, etcdCert, etcdKey string
	leaseTTL, etcdGrace       time.Duration
	instanceID                string
}

func (s *storeOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&s.kekFile, "kek-file", "", "key-encryption key file: signing keys are stored sealed with its first key (\"<id> <base64 of 32 bytes>\" a line; later lines: older keys still read); required with --etcd-endpoint")
	fs.Var(&s.etcd, "etcd-endpoint", "etcd member URL (repeatable): keep the state in etcd instead of --data-dir; every instance on the same etcd and --etcd-prefix serves xDS and the admin API at once, writes through any of them, and pushes every committed change to its replicas")
	fs.StringVar(&s.etcdPrefix, "etcd-prefix", etcdstore.DefaultPrefix, "key prefix of the state in etcd")
	fs.StringVar(&s.etcdCA, "etcd-cacert", "", "CA bundle verifying the etcd members (TLS; required unless every endpoint is loopback)")
	fs.StringVar(&s.etcdCert, "etcd-cert", "", "client certificate for etcd (mTLS)")
	fs.StringVar(&s.etcdKey, "etcd-key", "", "client key for etcd (mTLS)")
	fs.DurationVar(&s.leaseTTL, "etcd-lease-ttl", 5*time.Second, "lease of this instance's records in etcd (presence, replica ACKs) and of the leadership of singleton work: they lapse this long after the instance died or lost etcd")
	fs.DurationVar(&s.etcdGrace, "etcd-grace", 5*time.Second, "with --etcd-endpoint: once etcd has been out of reach (or without quorum) this long, close every xDS stream and refuse new ones until etcd answers again, so replicas move to a healthy instance; writes fail at once with \"etcd unavailable\" from the first failed probe")
	fs.StringVar(&s.instanceID, "instance-id", "", "name of this instance in etcd (replica ACK records, leadership, logs, mandatectl status); default hostname-pid")
}

// openStore opens the store: bbolt under dataDir, or etcd with
// --etcd-endpoint (then the etcd backend is returned too, for its health).
// With --kek-file, signing keys are sealed with the current
// key-encryption key (keys stored in the clear or under an older KEK are
// resealed now).
func openStore(ctx context.Context, dataDir string, so storeOptions, logger *slog.Logger) (*store.DB, *etcdstore.Backend, error) {
	var opts []store.Option
	if so.kekFile != "" {
		cur, old, err := store.ReadKEKFile(so.kekFile)
		if err != nil {
			return nil, nil, err
		}
		opts = append(opts, store.WithKeyEncryption(cur, old...))
	}
	var (
		st  *store.DB
		be  *etcdstore.Backend
		err error
	)
	if len(so.etcd) == 0 {
		if st, err = boltstore.Open(ctx, dataDir, opts...); err != nil {
			return nil, nil, err
		}
	} else {
		if st, be, err = openEtcd(ctx, so, logger, opts); err != nil {
			return nil, nil, err
		}
	}
	n, err := st.RewrapSigningKeys(ctx)
	if err != nil {
		_ = st.Close()
		return nil, nil, err
	}
	if n > 0 {
		logger.Info("signing keys sealed with the current key-encryption key", "keys", n)
	}
	return st, be, nil
}

func openEtcd(ctx context.Context, so storeOptions, logger *slog.Logger, opts []store.Option) (*store.DB, *etcdstore.Backend, error) {
	if so.kekFile == "" {
		return nil, nil, errors.New("--etcd-endpoint requires --kek-file: etcd never holds a signing key in the clear")
	}
	if so.etcdGrace <= 0 {
		return nil, nil, errors.New("--etcd-grace must be positive")
	}
	tlsCfg, err := so.etcdTLS()
	if err != nil {
		return nil, nil, err
	}
	be, err := etcdstore.OpenBackend(ctx, etcdstore.Config{Endpoints: so.etcd, Prefix: so.etcdPrefix, TLS: tlsCfg})
	if err != nil {
		return nil, nil, err
	}
	st, err := store.New(be, opts...)
	if err != nil {
		return nil, nil, err
	}
	logger.Info("control plane state on etcd", "endpoints", []string(so.etcd), "prefix", so.etcdPrefix, "instance", so.instance())
	return st, be, nil
}

// instance is --instance-id, or hostname-pid.
func (so storeOptions) instance() string {
	if so.instanceID != "" {
		return so.instanceID
	}
	host, _ := os.Hostname()
	return fmt.Sprintf("%s-%d", host, os.Getpid())
}

func (so storeOptions) etcdTLS() (*tls.Config, error) {
	if so.etcdCA == "" {
		if so.etcdCert != "" || so.etcdKey != "" {
			return nil, errors.New("--etcd-cert and --etcd-key need --etcd-cacert")
		}
		for _, e := range so.etcd {
			u, err := url.Parse(e)
			if err != nil {
				return nil, fmt.Errorf("--etcd-endpoint %q: %w", e, err)
			}
			if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
				return nil, fmt.Errorf("--etcd-endpoint %s without TLS: plaintext only on loopback (give --etcd-cacert)", e)
			}
		}
		return nil, nil
	}
	pem, err := os.ReadFile(so.etcdCA)
	if err != nil {
		return nil, fmt.Errorf("--etcd-cacert: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("--etcd-cacert: no certificate")
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if so.etcdCert != "" || so.etcdKey != "" {
		cert, err := tls.LoadX509KeyPair(so.etcdCert, so.etcdKey)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cert/--etcd-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
