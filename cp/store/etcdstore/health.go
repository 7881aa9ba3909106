package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mandate-dev/mandate/cp/store"
)

// Defaults of the health probe.
const (
	DefaultProbeEvery   = 500 * time.Millisecond
	DefaultProbeTimeout = time.Second
	DefaultOpTimeout    = 5 * time.Second
)

// health is the backend's view of etcd, kept by a probe: a linearizable
// read (it needs a quorum and a leader) every probe interval.
type health struct {
	mu      sync.Mutex
	err     error // nil while etcd answers
	since   time.Time
	changed chan struct{}
}

// Health is the state of the backend's etcd connection.
type Health struct {
	// Err is nil while etcd answers; else it says why it does not (an
	// error wrapping store.ErrUnavailable).
	Err error
	// Since is when the state began.
	Since time.Time
	// Changed is closed when the state changes.
	Changed <-chan struct{}
}

// Health returns the backend's current view of etcd.
func (b *Backend) Health() Health {
	b.h.mu.Lock()
	defer b.h.mu.Unlock()
	return Health{Err: b.h.err, Since: b.h.since, Changed: b.h.changed}
}

// unavailable wraps err as a *store.UnavailableError ("etcd unavailable:
// ...").
func unavailable(err error) error {
	var ue *store.UnavailableError
	if errors.As(err, &ue) {
		return ue
	}
	return &store.UnavailableError{Backend: "etcd", Err: err}
}

func (b *Backend) setHealth(err error) {
	b.h.mu.Lock()
	defer b.h.mu.Unlock()
	if (err == nil) == (b.h.err == nil) {
		if err != nil {
			b.h.err = unavailable(err) // keep the latest cause
		}
		return
	}
	if err != nil {
		err = unavailable(err)
	}
	b.h.err, b.h.since = err, time.Now()
	close(b.h.changed)
	b.h.changed = make(chan struct{})
}

// probe keeps the health state until ctx ends.
func (b *Backend) probe(ctx context.Context, every, timeout time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), timeout)
		_, err := b.c.Get(pctx, b.prefix+"\x00", clientv3.WithCountOnly())
		cancel()
		if ctx.Err() != nil {
			return
		}
		b.setHealth(err)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// checkHealth fails at once while the probe finds etcd out of reach.
func (b *Backend) checkHealth() error {
	b.h.mu.Lock()
	defer b.h.mu.Unlock()
	return b.h.err
}

// opCtx bounds one etcd call, makes it fail at once on a member that
// lost its leader instead of waiting for one, and ends it when the probe
// finds etcd out of reach meanwhile.
func (b *Backend) opCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	octx, cancel := context.WithTimeout(clientv3.WithRequireLeader(ctx), b.opTimeout)
	b.h.mu.Lock()
	ok, changed := b.h.err == nil, b.h.changed
	b.h.mu.Unlock()
	if ok {
		stop := make(chan struct{})
		go func() {
			select {
			case <-changed:
				cancel()
			case <-octx.Done():
			case <-stop:
			}
		}()
		return octx, func() { close(stop); cancel() }
	}
	return octx, cancel
}

// callErr turns the error of an etcd call into store.ErrUnavailable when
// etcd could not answer (no leader, out of reach, timed out, or the
// probe found it out of reach meanwhile) and the caller's context is
// still live.
func (b *Backend) callErr(ctx context.Context, what string, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("etcdstore: %s: %w", what, ctx.Err())
	}
	if herr := b.checkHealth(); herr != nil {
		return unavailable(fmt.Errorf("%s: %w", what, herr.(*store.UnavailableError).Err))
	}
	if !isUnavailable(err) {
		return fmt.Errorf("etcdstore: %s: %w", what, err)
	}
	// One slow or failed call (its member just died, a new raft leader
	// is being elected) does not turn the next writes away: the probe
	// decides whether etcd is out of reach.
	return unavailable(fmt.Errorf("%s: %w", what, err))
}

// isUnavailable reports whether err says etcd could not answer (rather
// than answered with an error).
func isUnavailable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.Unavailable || ee.Code() == codes.DeadlineExceeded
	}
	c := status.Code(err)
	return c == codes.Unavailable || c == codes.DeadlineExceeded
}
