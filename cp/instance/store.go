package instance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/cp/store/boltstore"
	"github.com/mandate-dev/mandate/cp/store/etcdstore"
)

// openStore opens the store: bbolt under DataDir, or etcd (then the etcd
// backend is returned too, for its health, leases and elections). With a
// KEK file, signing keys are sealed with the current key-encryption key
// (keys stored in the clear or under an older KEK are resealed now).
func openStore(ctx context.Context, sc StoreConfig, logger *slog.Logger) (*store.DB, *etcdstore.Backend, error) {
	var opts []store.Option
	if sc.KEKFile != "" {
		cur, old, err := store.ReadKEKFile(sc.KEKFile)
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
	if !sc.etcd() {
		if st, err = boltstore.Open(ctx, sc.DataDir, opts...); err != nil {
			return nil, nil, err
		}
	} else {
		if st, be, err = openEtcd(ctx, sc, logger, opts); err != nil {
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

func openEtcd(ctx context.Context, sc StoreConfig, logger *slog.Logger, opts []store.Option) (*store.DB, *etcdstore.Backend, error) {
	if sc.KEKFile == "" {
		return nil, nil, errors.New("etcd requires --kek-file: etcd never holds a signing key in the clear")
	}
	if sc.EtcdGrace <= 0 {
		return nil, nil, errors.New("the etcd grace (--etcd-grace) must be positive")
	}
	tlsCfg, err := sc.etcdTLS()
	if err != nil {
		return nil, nil, err
	}
	be, err := etcdstore.OpenBackend(ctx, etcdstore.Config{Endpoints: sc.EtcdEndpoints, Prefix: sc.EtcdPrefix, TLS: tlsCfg})
	if err != nil {
		return nil, nil, err
	}
	st, err := store.New(be, opts...) // closes be on error
	if err != nil {
		return nil, nil, err
	}
	logger.Info("control plane state on etcd", "endpoints", sc.EtcdEndpoints, "prefix", sc.EtcdPrefix, "instance", sc.InstanceID)
	return st, be, nil
}

func (sc StoreConfig) etcdTLS() (*tls.Config, error) {
	if sc.EtcdCA == "" {
		if sc.EtcdCert != "" || sc.EtcdKey != "" {
			return nil, errors.New("an etcd client certificate (--etcd-cert, --etcd-key) needs a CA (--etcd-cacert)")
		}
		for _, e := range sc.EtcdEndpoints {
			u, err := url.Parse(e)
			if err != nil {
				return nil, fmt.Errorf("etcd endpoint %q: %w", e, err)
			}
			if ip := net.ParseIP(u.Hostname()); ip == nil || !ip.IsLoopback() {
				return nil, fmt.Errorf("etcd endpoint %s without TLS: plaintext only on loopback (give --etcd-cacert)", e)
			}
		}
		return nil, nil
	}
	pem, err := os.ReadFile(sc.EtcdCA)
	if err != nil {
		return nil, fmt.Errorf("etcd CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("etcd CA: no certificate")
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if sc.EtcdCert != "" || sc.EtcdKey != "" {
		cert, err := tls.LoadX509KeyPair(sc.EtcdCert, sc.EtcdKey)
		if err != nil {
			return nil, fmt.Errorf("etcd client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
