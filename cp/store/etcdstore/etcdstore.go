// Package etcdstore is the store backend on an etcd cluster, shared by
// several mandate-cp instances: every instance sees one state, and
// versions are etcd revisions (global, increasing with every commit).
//
// Layout under a key prefix (default "/mandate/"): a table's keys are
// <prefix><table>/k/<key>, and its marker <prefix><table>/m is written by
// every commit that writes the table, so the marker's mod revision is the
// table's revision. A transaction reads at one revision (a snapshot) and
// commits with an etcd Txn that compares the mod revision of everything
// it read (single keys, and the markers of the tables it scanned) and
// retries from the start when another commit got there first: optimistic
// serializable transactions, so a use count or a quota check holds across
// instances. The first attempt of a write guesses what it reads (see
// Backend.Update): a Revoke is then one etcd call, its Txn.
//
// etcd's defaults limit a transaction to 128 operations and a request to
// 1.5 MiB: a batch of revocations is one transaction, so run etcd with
// --max-txn-ops and --max-request-bytes above the largest batch (the
// README's High availability section says which).
package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/mandate-dev/mandate/cp/store"
)

// DefaultPrefix is the key prefix of the store.
const DefaultPrefix = "/mandate/"

// Config configures Open.
type Config struct {
	// Endpoints of the etcd members (at least one).
	Endpoints []string
	// Prefix of every key (default DefaultPrefix); it must end in "/".
	Prefix string
	// DialTimeout bounds the first connection (default 5s).
	DialTimeout time.Duration
	// TLS for the connection to etcd (nil: plaintext, for loopback
	// tests only).
	TLS *tls.Config
	// Username and Password, when etcd authentication is on.
	Username, Password string
	// ProbeEvery and ProbeTimeout: how often the backend checks that
	// etcd answers (a linearizable read, which needs a quorum), and how
	// long it waits for the answer (defaults DefaultProbeEvery and
	// DefaultProbeTimeout). While the last probe failed, writes fail at
	// once with store.ErrUnavailable; Health reports the state. With
	// several endpoints they also pace the search for the leading
	// member, whose connection transactions go through.
	ProbeEvery, ProbeTimeout time.Duration
	// OpTimeout bounds every etcd call of a transaction (default
	// DefaultOpTimeout): past it the write fails with
	// store.ErrUnavailable instead of waiting for etcd to come back.
	OpTimeout time.Duration
}

// Open connects to etcd and returns a DB over it.
func Open(ctx context.Context, cfg Config, opts ...store.Option) (*store.DB, error) {
	be, err := OpenBackend(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return store.New(be, opts...)
}

// Backend is an etcd cluster as a store.Backend.
type Backend struct {
	c *clientv3.Client
	// seen is the highest revision this backend committed or read
	// linearizably or got from its watch: a serializable read from a
	// member behind it is not used.
	seen atomic.Int64
	// known: the keys this backend's commits read and wrote.
	known     known
	prefix    string
	owned     bool
	opTimeout time.Duration
	h         health
	stopProbe context.CancelFunc

	// members are the endpoints Watch follows one by one and the leader
	// is looked for among, with a client of their own (cfg, Endpoints
	// aside) opened on first use.
	members []string
	cfg     clientv3.Config
	mmu     sync.Mutex
	mcs     map[string]*clientv3.Client
	closed  bool
	// leader is the leading member's connection (nil: unknown), see
	// commitTxn.
	leader atomic.Pointer[leaderKV]
}

// OpenBackend connects to etcd (Open wraps the backend in a DB).
func OpenBackend(ctx context.Context, cfg Config) (*Backend, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdstore: no endpoint")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		return nil, fmt.Errorf("etcdstore: prefix %q must end in /", cfg.Prefix)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.ProbeEvery <= 0 {
		cfg.ProbeEvery = DefaultProbeEvery
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = DefaultOpTimeout
	}
	ccfg := clientv3.Config{
		Endpoints: cfg.Endpoints, DialTimeout: cfg.DialTimeout, TLS: cfg.TLS,
		Username: cfg.Username, Password: cfg.Password,
		Logger: zap.NewNop(), MaxCallSendMsgSize: 64 << 20, MaxCallRecvMsgSize: 64 << 20,
	}
	dial := ccfg
	dial.Context = ctx
	c, err := clientv3.New(dial)
	if err != nil {
		return nil, fmt.Errorf("etcdstore: connect to %v: %w", cfg.Endpoints, err)
	}
	// Fail now, not at the first write, when no member answers.
	sctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := c.Get(sctx, cfg.Prefix+"\x00"); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("etcdstore: reach %v: %w", cfg.Endpoints, err)
	}
	b := newBackend(c, cfg.Prefix, cfg.OpTimeout)
	b.owned = true
	// The member clients tell which calls were handed to their
	// connection (see commitTxn).
	ccfg.DialOptions = append(slices.Clip(ccfg.DialOptions), grpc.WithStatsHandler(sentTracker{}))
	b.members, b.cfg = slices.Clone(cfg.Endpoints), ccfg
	pctx, stop := context.WithCancel(context.Background())
	b.stopProbe = stop
	go b.probe(pctx, cfg.ProbeEvery, cfg.ProbeTimeout)
	if len(b.members) > 1 {
		go b.followLeader(pctx, cfg.ProbeEvery, cfg.ProbeTimeout)
	}
	return b, nil
}

func newBackend(c *clientv3.Client, prefix string, opTimeout time.Duration) *Backend {
	return &Backend{c: c, prefix: prefix, opTimeout: opTimeout,
		h: health{since: time.Now(), changed: make(chan struct{})}}
}

// NewBackend wraps an existing client (not closed by Close).
func NewBackend(c *clientv3.Client, prefix string) (*Backend, error) {
	if c == nil || !strings.HasSuffix(prefix, "/") {
		return nil, errors.New("etcdstore: a client and a prefix ending in / are required")
	}
	return newBackend(c, prefix, DefaultOpTimeout), nil
}

// Client returns the etcd client (for leases, watches and elections).
func (b *Backend) Client() *clientv3.Client { return b.c }

// Prefix returns the key prefix of the store.
func (b *Backend) Prefix() string { return b.prefix }

// memberClient returns the client of one member (Watch's, and the
// leader's way for transactions). It is made outside mmu: with a
// username, clientv3.New asks the member for a token and can wait out
// DialTimeout on one that is down, which must not hold up the others.
func (b *Backend) memberClient(endpoint string) (*clientv3.Client, error) {
	b.mmu.Lock()
	c, ok := b.mcs[endpoint]
	closed := b.closed
	b.mmu.Unlock()
	switch {
	case closed:
		return nil, errors.New("closed")
	case ok:
		return c, nil
	}
	cfg := b.cfg
	cfg.Endpoints = []string{endpoint}
	c, err := clientv3.New(cfg)
	if err != nil {
		return nil, err
	}
	b.mmu.Lock()
	defer b.mmu.Unlock()
	if other, ok := b.mcs[endpoint]; ok || b.closed {
		_ = c.Close() // another call made one first, or the backend closed
		if b.closed {
			return nil, errors.New("closed")
		}
		return other, nil
	}
	if b.mcs == nil {
		b.mcs = map[string]*clientv3.Client{}
	}
	b.mcs[endpoint] = c
	return c, nil
}

// Close closes the clients the backend opened.
func (b *Backend) Close() error {
	if b.stopProbe != nil {
		b.stopProbe()
	}
	b.mmu.Lock()
	b.closed = true
	for _, c := range b.mcs {
		_ = c.Close()
	}
	b.mcs = nil
	b.mmu.Unlock()
	if b.owned {
		return b.c.Close()
	}
	return nil
}

// saw raises seen to rev.
func (b *Backend) saw(rev int64) {
	for {
		cur := b.seen.Load()
		if rev <= cur || b.seen.CompareAndSwap(cur, rev) {
			return
		}
	}
}

func (b *Backend) tablePrefix(table string) string { return b.prefix + url.PathEscape(table) + "/" }
func (b *Backend) key(table, key string) string    { return b.tablePrefix(table) + "k/" + key }
func (b *Backend) marker(table string) string      { return b.tablePrefix(table) + "m" }

// maxAttempts bounds the retries of a transaction that keeps losing to
// concurrent commits.
const maxAttempts = 200

// outcomeUnknown names a commit whose Txn was sent and not answered: a
// timeout or a lost connection leaves it undecided, not refused.
const outcomeUnknown = "commit outcome unknown (it may still be applied once etcd answers again)"

// ErrContention is returned when a transaction lost to concurrent
// commits maxAttempts times.
var ErrContention = errors.New("etcdstore: too much contention, transaction not committed")

// Update implements store.Backend.
//
// The first attempt guesses what it reads: a key that an earlier commit
// of this backend read and wrote (a counter, such as the audit trail's)
// is taken as that commit left it, without asking etcd; any other key is
// read from the state of the member the client reaches (a serializable
// read: no round of the quorum, as a linearizable read needs), as long as
// that member has applied every commit this backend made or saw. A guess
// may miss a commit of another instance; the commit's comparisons catch
// it, and every later attempt, as well as an attempt whose outcome is not
// a commit (fn failed, or wrote nothing), reads linearizably: a write is
// committed only over what it read, and nothing else is ever answered
// from a guess. A Revoke's write thus reads nothing from etcd before its
// Txn.
func (b *Backend) Update(ctx context.Context, fn func(store.Tx) error) (uint64, error) {
	if err := b.checkHealth(); err != nil {
		return 0, err
	}
	for attempt := range maxAttempts {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		t := &tx{b: b, ctx: ctx, write: true, serializable: attempt == 0,
			reads: map[string]int64{}, writes: map[string]*[]byte{}, tables: map[string]bool{}}
		if err := fn(t); err != nil {
			if errors.Is(err, rpctypes.ErrCompacted) || errors.Is(err, errBehind) {
				continue // the snapshot was compacted away, or is behind: start again
			}
			if t.guessed && !errors.Is(err, store.ErrUnavailable) && ctx.Err() == nil {
				continue // decided on a guess: decide again on linearizable reads
			}
			return 0, err
		}
		if len(t.tables) == 0 {
			if t.guessed {
				continue // as above: answer only from linearizable reads
			}
			if t.rev == 0 {
				if err := t.start(); err != nil {
					return 0, err
				}
			}
			return uint64(t.rev), nil
		}
		cmps := make([]clientv3.Cmp, 0, len(t.reads))
		for k, mr := range t.reads {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", mr))
		}
		keys := make([]string, 0, len(t.writes))
		for k := range t.writes {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		ops := make([]clientv3.Op, 0, len(keys)+len(t.tables))
		for table := range t.tables {
			ops = append(ops, clientv3.OpPut(b.marker(table), ""))
		}
		for _, k := range keys {
			if v := t.writes[k]; v == nil {
				ops = append(ops, clientv3.OpDelete(k))
			} else {
				ops = append(ops, clientv3.OpPut(k, string(*v)))
			}
		}
		resp, err := b.commitTxn(ctx, cmps, ops)
		if err != nil {
			// The Txn was sent: etcd may have appended it to its log
			// and commit it once a quorum answers again. Say so.
			return 0, store.OutcomeUnknown(b.callErr(ctx, outcomeUnknown, err))
		}
		if resp.Succeeded {
			b.saw(resp.Header.Revision)
			b.known.committed(t, resp.Header.Revision)
			return uint64(resp.Header.Revision), nil
		}
		b.known.forget(t.reads)
		// Lost to a concurrent commit: back off a little and redo.
		d := time.Duration(rand.N(1+min(attempt, 20))) * time.Millisecond
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(d):
		}
	}
	return 0, ErrContention
}

// View implements store.Backend.
func (b *Backend) View(ctx context.Context, fn func(store.Tx) error) error {
	return fn(&tx{b: b, ctx: ctx, reads: map[string]int64{}})
}

type tx struct {
	b     *Backend
	ctx   context.Context
	write bool
	// serializable: reads are served by the member reached, from its
	// own state, or from what this backend knows (see Update); guessed:
	// a read was.
	serializable, guessed bool
	rev                   int64            // the snapshot revision, set by the first read
	reads                 map[string]int64 // key -> mod revision seen (0: absent)
	writes                map[string]*[]byte
	tables                map[string]bool
}

func (t *tx) opts(extra ...clientv3.OpOption) []clientv3.OpOption {
	if t.rev > 0 {
		extra = append(extra, clientv3.WithRev(t.rev))
	}
	return extra
}

// errBehind: the member a serializable read reached has not applied a
// commit this backend made or saw; the attempt starts again.
var errBehind = errors.New("etcdstore: member behind")

func (t *tx) get(key string, extra ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if t.serializable {
		extra = append(extra, clientv3.WithSerializable())
	}
	ctx, cancel := t.b.opCtx(t.ctx)
	resp, err := t.b.c.Get(ctx, key, t.opts(extra...)...)
	cancel()
	if t.serializable && (errors.Is(err, rpctypes.ErrFutureRev) || err == nil && resp.Header.Revision < t.b.seen.Load()) {
		// A member behind the snapshot (a later read of the attempt
		// reached another member) or behind what this backend knows.
		return nil, errBehind
	}
	if err != nil {
		return nil, t.b.callErr(t.ctx, "read", err)
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
		if !t.serializable {
			t.b.saw(t.rev)
		}
	}
	t.guessed = t.guessed || t.serializable
	return resp, nil
}

// start fixes the snapshot revision.
func (t *tx) start() error {
	_, err := t.get(t.b.prefix+"\x00", clientv3.WithCountOnly())
	return err
}

func (t *tx) Get(table, key string) ([]byte, bool, error) {
	k := t.b.key(table, key)
	if t.writes != nil {
		if v, ok := t.writes[k]; ok {
			if v == nil {
				return nil, false, nil
			}
			return append([]byte{}, *v...), true, nil
		}
	}
	if t.serializable {
		if v, mr, ok := t.b.known.get(k); ok {
			t.noteRead(k, mr)
			t.guessed = true
			return v, true, nil
		}
	}
	resp, err := t.get(k)
	if err != nil {
		return nil, false, err
	}
	if len(resp.Kvs) == 0 {
		t.noteRead(k, 0)
		return nil, false, nil
	}
	t.noteRead(k, resp.Kvs[0].ModRevision)
	return resp.Kvs[0].Value, true, nil
}

func (t *tx) noteRead(k string, mr int64) {
	if _, ok := t.reads[k]; !ok {
		t.reads[k] = mr
	}
}

func (t *tx) Put(table, key string, val []byte) error {
	if !t.write {
		return errors.New("etcdstore: write in a read-only transaction")
	}
	if key == "" {
		return errors.New("etcdstore: empty key")
	}
	v := append([]byte{}, val...)
	t.writes[t.b.key(table, key)] = &v
	t.tables[table] = true
	return nil
}

func (t *tx) Delete(table, key string) error {
	if !t.write {
		return errors.New("etcdstore: write in a read-only transaction")
	}
	t.tables[table] = true
	if key != "" {
		t.writes[t.b.key(table, key)] = nil
	}
	return nil
}

// scanPage is how many keys one range read returns.
const scanPage = 512

func (t *tx) Scan(table, from string, fn func(string, []byte) (bool, error)) error {
	if err := t.noteMarker(table); err != nil {
		return err
	}
	base := t.b.tablePrefix(table) + "k/"
	end := clientv3.GetPrefixRangeEnd(base)
	start := base + from
	for {
		resp, err := t.get(start, clientv3.WithRange(end), clientv3.WithLimit(scanPage),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			more, err := fn(strings.TrimPrefix(string(kv.Key), base), kv.Value)
			if err != nil || !more {
				return err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// noteMarker reads a table's marker so that the commit fails when any
// other commit wrote the table since.
func (t *tx) noteMarker(table string) error {
	m := t.b.marker(table)
	if _, ok := t.reads[m]; ok {
		return nil
	}
	resp, err := t.get(m)
	if err != nil {
		return err
	}
	var mr int64
	if len(resp.Kvs) > 0 {
		mr = resp.Kvs[0].ModRevision
	}
	t.reads[m] = mr
	return nil
}

func (t *tx) Rev(table string) (uint64, error) {
	if err := t.noteMarker(table); err != nil {
		return 0, err
	}
	return uint64(t.reads[t.b.marker(table)]), nil
}
