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
	leaseTTL                  time.Duration
	instanceID                string
}

func (s *storeOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&s.kekFile, "kek-file", "", "key-encryption key file: signing keys are stored sealed with its first key (\"<id> <base64 of 32 bytes>\" a line; later lines: older keys still read); required with --etcd-endpoint")
	fs.Var(&s.etcd, "etcd-endpoint", "etcd member URL (repeatable): keep the state in etcd instead of --data-dir; instances sharing it elect one leader, the others wait as standbys")
	fs.StringVar(&s.etcdPrefix, "etcd-prefix", etcdstore.DefaultPrefix, "key prefix of the state in etcd")
	fs.StringVar(&s.etcdCA, "etcd-cacert", "", "CA bundle verifying the etcd members (TLS; required unless every endpoint is loopback)")
	fs.StringVar(&s.etcdCert, "etcd-cert", "", "client certificate for etcd (mTLS)")
	fs.StringVar(&s.etcdKey, "etcd-key", "", "client key for etcd (mTLS)")
	fs.DurationVar(&s.leaseTTL, "etcd-lease-ttl", 5*time.Second, "lease of the leadership and of this instance's replica ACK records: a standby takes over, and the replicas of an instance leave the fleet's status and --wait counts, this long after it died or lost etcd")
	fs.StringVar(&s.instanceID, "instance-id", "", "name of this instance in etcd (replica ACK records, leadership, mandatectl status); default hostname/pid")
}

// openStore opens the store: bbolt under dataDir, or etcd with
// --etcd-endpoint, where it first waits to be elected leader. With
// --kek-file, signing keys are sealed with the current key-encryption key
// (keys stored in the clear or under an older KEK are resealed now). The
// leadership and the etcd backend are nil for bbolt.
func openStore(ctx context.Context, dataDir string, so storeOptions, logger *slog.Logger) (*store.DB, *etcdstore.Leadership, *etcdstore.Backend, error) {
	var opts []store.Option
	if so.kekFile != "" {
		cur, old, err := store.ReadKEKFile(so.kekFile)
		if err != nil {
			return nil, nil, nil, err
		}
		opts = append(opts, store.WithKeyEncryption(cur, old...))
	}
	var (
		st   *store.DB
		lead *etcdstore.Leadership
		be   *etcdstore.Backend
		err  error
	)
	if len(so.etcd) == 0 {
		if st, err = boltstore.Open(ctx, dataDir, opts...); err != nil {
			return nil, nil, nil, err
		}
	} else {
		if st, lead, be, err = openEtcd(ctx, so, logger, opts); err != nil {
			return nil, nil, nil, err
		}
	}
	n, err := st.RewrapSigningKeys(ctx)
	if err != nil {
		_ = st.Close()
		return nil, nil, nil, err
	}
	if n > 0 {
		logger.Info("signing keys sealed with the current key-encryption key", "keys", n)
	}
	return st, lead, be, nil
}

func openEtcd(ctx context.Context, so storeOptions, logger *slog.Logger, opts []store.Option) (*store.DB, *etcdstore.Leadership, *etcdstore.Backend, error) {
	if so.kekFile == "" {
		return nil, nil, nil, errors.New("--etcd-endpoint requires --kek-file: etcd never holds a signing key in the clear")
	}
	tlsCfg, err := so.etcdTLS()
	if err != nil {
		return nil, nil, nil, err
	}
	be, err := etcdstore.OpenBackend(ctx, etcdstore.Config{Endpoints: so.etcd, Prefix: so.etcdPrefix, TLS: tlsCfg})
	if err != nil {
		return nil, nil, nil, err
	}
	id := so.instance()
	logger.Info("waiting to lead the control plane on etcd", "endpoints", []string(so.etcd), "candidate", id)
	lead, err := be.Lead(ctx, id, so.leaseTTL)
	if err != nil {
		_ = be.Close()
		return nil, nil, nil, err
	}
	logger.Info("leading the control plane on etcd", "candidate", id)
	st, err := store.New(be, opts...)
	if err != nil {
		_ = lead.Resign(context.Background())
		return nil, nil, nil, err
	}
	return st, lead, be, nil
}

// instance is --instance-id, or hostname/pid.
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
