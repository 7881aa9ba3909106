package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Elector elects the instance that runs the singletons.
type Elector interface {
	// Lead returns once this instance leads, with a context that ends
	// when the leadership does (or ctx ends); an error when ctx ended
	// first or the election could not be run.
	Lead(ctx context.Context) (context.Context, error)
}

// Always is the elector of a fleet of one (bbolt): it always leads.
type Always struct{}

// Lead implements Elector.
func (Always) Lead(ctx context.Context) (context.Context, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return ctx, nil
}

// Election is the etcd elector: a concurrency.Election under the
// store's prefix (<prefix>_fleet/leader), on a lease of TTL. When the
// leader dies or loses etcd, its lease expires and the next candidate
// leads within the TTL.
type Election struct {
	c        *clientv3.Client
	key      string
	instance string
	ttl      int
}

// NewElection returns the elector of instance on the etcd of c, for the
// fleet sharing the store prefix.
func NewElection(c *clientv3.Client, prefix, instance string, ttl time.Duration) (*Election, error) {
	if c == nil || !strings.HasSuffix(prefix, "/") {
		return nil, errors.New("fleet: election needs an etcd client and a prefix ending in /")
	}
	if err := CheckInstanceID(instance); err != nil {
		return nil, err
	}
	if ttl < time.Second {
		return nil, fmt.Errorf("fleet: leadership TTL %v under one second", ttl)
	}
	return &Election{c: c, key: prefix + "_fleet/leader", instance: instance, ttl: int((ttl + time.Second - 1) / time.Second)}, nil
}

// Lead implements Elector.
func (e *Election) Lead(ctx context.Context) (context.Context, error) {
	sess, err := concurrency.NewSession(e.c, concurrency.WithTTL(e.ttl), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("fleet: leadership session: %w", err)
	}
	el := concurrency.NewElection(sess, e.key)
	if err := el.Campaign(ctx, e.instance); err != nil {
		_ = sess.Close()
		return nil, fmt.Errorf("fleet: campaign: %w", err)
	}
	lctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-sess.Done():
		case <-lctx.Done():
		}
		cancel()
		// Give the leadership up at once when this instance stops
		// leading of its own accord (shutdown); a lost session has
		// nothing left to give.
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = el.Resign(rctx)
		_ = sess.Close()
		rcancel()
	}()
	return lctx, nil
}

// Singletons runs the fleet's one-at-a-time work on the elected leader.
type Singletons struct {
	el      Elector
	log     *slog.Logger
	leading atomic.Bool
}

// NewSingletons returns the runner of the singletons elected by el.
func NewSingletons(el Elector, logger *slog.Logger) (*Singletons, error) {
	if el == nil {
		return nil, errors.New("fleet: nil elector")
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &Singletons{el: el, log: logger}, nil
}

// Leading reports whether this instance leads now.
func (s *Singletons) Leading() bool { return s.leading.Load() }

// Run campaigns and, while this instance leads, runs every task with a
// context that ends when the leadership does; then it waits for the
// tasks to return and campaigns again, until ctx ends.
func (s *Singletons) Run(ctx context.Context, tasks ...func(context.Context)) {
	for ctx.Err() == nil {
		lctx, err := s.el.Lead(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.log.Warn("singleton election failed; campaigning again", "error", err)
			t := time.NewTimer(time.Second)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		s.leading.Store(true)
		s.log.Info("leading the fleet's singletons (key rotation, sweeps, drift actions)")
		var wg sync.WaitGroup
		for _, task := range tasks {
			wg.Go(func() { task(lctx) })
		}
		<-lctx.Done()
		s.leading.Store(false)
		wg.Wait()
		if ctx.Err() == nil {
			s.log.Warn("lost the fleet's singleton leadership; campaigning again")
		}
	}
}
