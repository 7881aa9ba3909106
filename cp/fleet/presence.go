package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// PresenceConfig configures StartPresence.
type PresenceConfig struct {
	// Client is the etcd client (the store's: etcdstore.Backend.Client).
	Client *clientv3.Client
	// Prefix is the store's key prefix; the records live under
	// <Prefix>_fleet/nodes/<instance>.
	Prefix string
	// Instance names this instance (--instance-id); unique in the fleet.
	Instance string
	// TTL is the lease of this instance's record (--etcd-lease-ttl): the
	// record, and with it this instance's replicas, leaves every view this
	// long after the instance died or lost etcd.
	TTL time.Duration
	// Source is this instance's xDS server.
	Source Source
	Logger *slog.Logger
	// Coalesce is how long a publication waits for more changes after
	// the first (default 5ms): one write per burst of ACKs.
	Coalesce time.Duration
}

// Presence publishes this instance's replicas under a lease and follows
// every other instance's: the View of an etcd fleet.
type Presence struct {
	cfg    PresenceConfig
	log    *slog.Logger
	key    string
	dir    string
	cancel context.CancelFunc
	done   sync.WaitGroup

	mu      sync.Mutex
	remote  map[string][]Node // by instance, this one excluded
	viewErr error             // set while the other instances are not followed
	changed chan struct{}
	lease   clientv3.LeaseID
}

// maxRecord bounds a published record (etcd's default request limit is
// 1.5 MiB).
const maxRecord = 1 << 20

// StartPresence publishes this instance's replicas and follows the other
// instances' until Close or ctx ends. It returns once the first record is
// published and the others read.
func StartPresence(ctx context.Context, cfg PresenceConfig) (*Presence, error) {
	if cfg.Client == nil || cfg.Source == nil {
		return nil, errors.New("fleet: presence needs a client and a source")
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		return nil, fmt.Errorf("fleet: prefix %q must end in /", cfg.Prefix)
	}
	if err := CheckInstanceID(cfg.Instance); err != nil {
		return nil, err
	}
	if cfg.TTL < time.Second {
		return nil, fmt.Errorf("fleet: lease TTL %v under one second", cfg.TTL)
	}
	if cfg.Coalesce == 0 {
		cfg.Coalesce = 5 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	dir := cfg.Prefix + "_fleet/nodes/"
	p := &Presence{cfg: cfg, log: log, dir: dir, key: dir + cfg.Instance,
		remote: map[string][]Node{}, changed: make(chan struct{})}
	// The first publication and read happen here, so that a caller
	// starting to serve sees the fleet and is seen by it.
	if err := p.grant(ctx); err != nil {
		return nil, err
	}
	if err := p.publish(ctx); err != nil {
		return nil, err
	}
	rev, err := p.load(ctx)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	p.cancel = cancel
	p.done.Add(2)
	go func() { defer p.done.Done(); p.runPublish(rctx) }()
	go func() { defer p.done.Done(); p.runWatch(rctx, rev) }()
	return p, nil
}

// Close stops publishing and removes this instance's record at once (its
// replicas leave the fleet's view without waiting for the lease).
func (p *Presence) Close() error {
	p.cancel()
	p.done.Wait()
	p.mu.Lock()
	lease := p.lease
	p.mu.Unlock()
	if lease == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := p.cfg.Client.Revoke(ctx, lease); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("fleet: revoke presence lease: %w", err)
	}
	return nil
}

// Nodes implements View: this instance's replicas as its xDS server has
// them now, and every other live instance's as last published.
func (p *Presence) Nodes() ([]Node, error) {
	out := nodesOf(p.cfg.Instance, p.cfg.Source)
	p.mu.Lock()
	for _, ns := range p.remote {
		out = append(out, ns...)
	}
	err := p.viewErr
	p.mu.Unlock()
	sortNodes(out)
	return out, err
}

// Changed implements View: closed when this instance's replicas or
// another instance's record change.
func (p *Presence) Changed() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.changed
}

func (p *Presence) notify() {
	p.mu.Lock()
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

func (p *Presence) grant(ctx context.Context) error {
	resp, err := p.cfg.Client.Grant(ctx, int64((p.cfg.TTL+time.Second-1)/time.Second))
	if err != nil {
		return fmt.Errorf("fleet: presence lease: %w", err)
	}
	p.mu.Lock()
	p.lease = resp.ID
	p.mu.Unlock()
	return nil
}

type record struct {
	Instance string
	Nodes    []Node
}

func (p *Presence) publish(ctx context.Context) error {
	// Only connected replicas: the others count nowhere, and a churn of
	// node ids would otherwise fill the record for the retention period
	// (this instance's own status still shows them).
	var nodes []Node
	for _, n := range nodesOf(p.cfg.Instance, p.cfg.Source) {
		if n.Connected {
			nodes = append(nodes, n)
		}
	}
	b, err := json.Marshal(record{Instance: p.cfg.Instance, Nodes: nodes})
	if err != nil {
		return fmt.Errorf("fleet: encode presence: %w", err)
	}
	if len(b) > maxRecord {
		return fmt.Errorf("fleet: presence record of %d bytes over %d", len(b), maxRecord)
	}
	p.mu.Lock()
	lease := p.lease
	p.mu.Unlock()
	if _, err := p.cfg.Client.Put(ctx, p.key, string(b), clientv3.WithLease(lease)); err != nil {
		return fmt.Errorf("fleet: publish presence: %w", err)
	}
	return nil
}

// runPublish keeps the lease alive and publishes after every change of
// the source; a lost lease (etcd out of reach longer than the TTL) is
// granted again and the record published anew.
func (p *Presence) runPublish(ctx context.Context) {
	retry := time.NewTimer(0)
	<-retry.C
	var ka <-chan *clientv3.LeaseKeepAliveResponse
	// ch is replaced only when a publication is about to read the source:
	// a change that comes while this loop wakes for something else (the
	// lease) leaves it closed, so it is published at the next turn. The
	// first turn publishes what changed since StartPresence did.
	ch := p.cfg.Source.Changed()
	leaseOK, dirty := true, true
	for ctx.Err() == nil {
		if !leaseOK {
			if err := p.grant(ctx); err != nil {
				p.log.Warn("fleet presence lease not granted; retrying", "error", err)
				retry.Reset(200 * time.Millisecond)
				select {
				case <-ctx.Done():
					return
				case <-retry.C:
				}
				continue
			}
			leaseOK, ka, dirty = true, nil, true
		}
		if ka == nil {
			p.mu.Lock()
			lease := p.lease
			p.mu.Unlock()
			var err error
			if ka, err = p.cfg.Client.KeepAlive(ctx, lease); err != nil {
				leaseOK = false
				continue
			}
		}
		var wait <-chan time.Time
		if dirty {
			ch = p.cfg.Source.Changed()
			// Changes that came while coalescing woke nobody yet.
			p.notify()
			if err := p.publish(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				p.log.Warn("fleet presence not published; retrying", "error", err)
				if errors.Is(err, rpctypes.ErrLeaseNotFound) {
					leaseOK = false
				}
				retry.Reset(100 * time.Millisecond)
				wait = retry.C
			} else {
				dirty = false
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-wait:
		case <-ch:
			// This instance's own view changed: wake its waiters now,
			// publish once the burst is over.
			p.notify()
			dirty = true
			t := time.NewTimer(p.cfg.Coalesce)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		case _, ok := <-ka:
			if !ok {
				p.log.Warn("fleet presence lease lost; granting a new one")
				leaseOK = false
			}
		}
	}
}

// load reads every other instance's record and returns the revision read.
func (p *Presence) load(ctx context.Context) (int64, error) {
	resp, err := p.cfg.Client.Get(ctx, p.dir, clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("fleet: read presence: %w", err)
	}
	remote := map[string][]Node{}
	for _, kv := range resp.Kvs {
		if inst, ns, ok := p.decode(kv.Key, kv.Value); ok {
			remote[inst] = ns
		}
	}
	p.mu.Lock()
	p.remote, p.viewErr = remote, nil
	p.mu.Unlock()
	p.notify()
	return resp.Header.Revision, nil
}

// decode checks a record read from etcd; this instance's own is skipped
// (the live source is fresher).
func (p *Presence) decode(key, val []byte) (string, []Node, bool) {
	inst := strings.TrimPrefix(string(key), p.dir)
	if inst == p.cfg.Instance || CheckInstanceID(inst) != nil {
		return "", nil, false
	}
	var r record
	if len(val) > maxRecord || json.Unmarshal(val, &r) != nil || r.Instance != inst {
		p.log.Warn("fleet presence record unreadable; ignored", "instance", inst)
		return "", nil, false
	}
	for i := range r.Nodes {
		r.Nodes[i].Instance = inst
	}
	return inst, r.Nodes, true
}

// runWatch follows the records. While the watch is broken (etcd out of
// reach, or this member without a leader), the view is marked
// incomplete: an instance may have died meanwhile.
func (p *Presence) runWatch(ctx context.Context, rev int64) {
	for ctx.Err() == nil {
		if rev == 0 {
			var err error
			if rev, err = p.load(ctx); err != nil {
				p.setViewErr(err)
				t := time.NewTimer(200 * time.Millisecond)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
				continue
			}
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wr := range p.cfg.Client.Watch(wctx, p.dir, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
			if err := wr.Err(); err != nil {
				p.setViewErr(fmt.Errorf("fleet: presence watch: %w", err))
				break
			}
			p.mu.Lock()
			for _, ev := range wr.Events {
				inst := strings.TrimPrefix(string(ev.Kv.Key), p.dir)
				if ev.Type == clientv3.EventTypeDelete {
					delete(p.remote, inst)
					continue
				}
				if inst, ns, ok := p.decode(ev.Kv.Key, ev.Kv.Value); ok {
					p.remote[inst] = ns
				}
			}
			p.mu.Unlock()
			p.notify()
		}
		cancel()
		if ctx.Err() == nil {
			p.setViewErr(errors.New("fleet: presence watch ended"))
		}
		rev = 0 // read everything again, then watch from there
	}
}

func (p *Presence) setViewErr(err error) {
	p.mu.Lock()
	p.viewErr = err
	p.mu.Unlock()
	p.notify()
}
