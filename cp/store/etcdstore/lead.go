package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/client/v3/concurrency"
)

// Leadership is this instance's turn as the elected leader, for work one
// instance at a time must do (singletons). Every instance writes to the
// store whether it leads or not.
type Leadership struct {
	sess *concurrency.Session
	el   *concurrency.Election
	lost chan struct{}
}

// Lead campaigns, as id, for the leadership of every mandate-cp sharing
// the backend's prefix, and returns once this instance leads (ctx ends
// the wait). The leadership lives on an etcd lease of ttl: when this
// process dies or loses etcd for longer than ttl, another candidate takes
// over.
func (b *Backend) Lead(ctx context.Context, id string, ttl time.Duration) (*Leadership, error) {
	secs := int(ttl / time.Second)
	if secs < 1 {
		return nil, fmt.Errorf("etcdstore: leadership TTL %v under one second", ttl)
	}
	if id == "" {
		return nil, errors.New("etcdstore: empty candidate id")
	}
	sess, err := concurrency.NewSession(b.c, concurrency.WithTTL(secs))
	if err != nil {
		return nil, fmt.Errorf("etcdstore: leadership session: %w", err)
	}
	el := concurrency.NewElection(sess, b.prefix+"_leader")
	if err := el.Campaign(ctx, id); err != nil {
		_ = sess.Close()
		return nil, fmt.Errorf("etcdstore: campaign: %w", err)
	}
	l := &Leadership{sess: sess, el: el, lost: make(chan struct{})}
	go func() {
		<-sess.Done()
		close(l.lost)
	}()
	return l, nil
}

// Lost is closed when the leadership ends (lease expired, etcd out of
// reach longer than the TTL, or Resign).
func (l *Leadership) Lost() <-chan struct{} { return l.lost }

// Resign gives the leadership up now, so another candidate takes over without
// waiting for the lease to expire.
func (l *Leadership) Resign(ctx context.Context) error {
	err := l.el.Resign(ctx)
	if cerr := l.sess.Close(); err == nil {
		err = cerr
	}
	return err
}
