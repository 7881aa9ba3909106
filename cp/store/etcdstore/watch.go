package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/mandate-dev/mandate/cp/store"
)

// Watch implements store.Watcher: an etcd watch over the keys of every
// table whose name begins with tablePrefix, from revision after+1. The
// events of one revision (one commit: etcd never splits a revision across
// watch responses) become one store.Commit; progress notifications become
// progress marks. The watch requires an etcd leader, so a member cut off
// from its quorum ends it with an error instead of keeping it silent.
//
// With several endpoints the backend watches through every member at once
// (a client of its own per member) and delivers each commit the first time
// a member sends it: a member applies a commit once it learns that it is
// committed, the leader first, the followers a message later, and a
// single watch would wait for whichever member it happens to be on. Each
// member's stream is in revision order, so delivering only what is above
// the last revision delivered keeps the merged feed in order and
// complete. The watch goes on while any member's stream does.
func (b *Backend) Watch(ctx context.Context, after uint64, tablePrefix string, fn func(store.Commit) error) error {
	keyPrefix := b.prefix + url.PathEscape(tablePrefix)
	if len(b.members) < 2 {
		err := b.watchOne(ctx, b.c, after, keyPrefix, fn)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	type item struct {
		c    store.Commit
		err  error
		done bool
	}
	items := make(chan item)
	var wg sync.WaitGroup
	wctx, cancel := context.WithCancel(ctx)
	defer wg.Wait()
	defer cancel()
	for _, ep := range b.members {
		wg.Go(func() {
			send := func(it item) error {
				select {
				case items <- it:
					return nil
				case <-wctx.Done():
					return wctx.Err()
				}
			}
			c, err := b.memberClient(ep)
			if err == nil {
				err = b.watchOne(wctx, c, after, keyPrefix, func(c store.Commit) error { return send(item{c: c}) })
			}
			_ = send(item{err: fmt.Errorf("etcdstore: watch through %s: %w", ep, err), done: true})
		})
	}
	delivered, live := after, len(b.members)
	var first error
	for live > 0 {
		it := <-items
		switch {
		case it.done:
			live--
			if first == nil || errors.Is(it.err, store.ErrCompacted) {
				first = it.err
			}
			if errors.Is(it.err, store.ErrCompacted) {
				live = 0 // every member compacted the same revisions
			}
		case it.c.Rev > delivered:
			if err := fn(it.c); err != nil {
				return err
			}
			delivered = it.c.Rev
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return first
}

// watchOne watches through c (see Watch).
func (b *Backend) watchOne(ctx context.Context, c *clientv3.Client, after uint64, keyPrefix string, fn func(store.Commit) error) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := c.Watch(wctx, keyPrefix, clientv3.WithPrefix(), clientv3.WithRev(int64(after)+1),
		clientv3.WithProgressNotify())
	for resp := range wch {
		if err := resp.Err(); err != nil {
			if resp.CompactRevision > 0 || errors.Is(err, rpctypes.ErrCompacted) {
				return fmt.Errorf("etcdstore: watch from %d: %w", after+1, store.ErrCompacted)
			}
			return fmt.Errorf("etcdstore: watch: %w", err)
		}
		b.saw(resp.Header.Revision)
		if resp.IsProgressNotify() {
			if err := fn(store.Commit{Rev: uint64(resp.Header.Revision)}); err != nil {
				return err
			}
			continue
		}
		var cur *store.Commit
		flush := func() error {
			if cur == nil {
				return nil
			}
			c := *cur
			cur = nil
			return fn(c)
		}
		for _, ev := range resp.Events {
			rev := uint64(ev.Kv.ModRevision)
			if cur != nil && cur.Rev != rev {
				if err := flush(); err != nil {
					return err
				}
			}
			if cur == nil {
				cur = &store.Commit{Rev: rev}
			}
			table, key, ok := b.parseKey(string(ev.Kv.Key))
			if !ok {
				continue
			}
			if !slices.Contains(cur.Tables, table) {
				cur.Tables = append(cur.Tables, table)
			}
			if key == "" {
				continue // the table's marker
			}
			w := store.Write{Table: table, Key: key}
			if ev.Type == mvccpb.DELETE {
				w.Deleted = true
			} else {
				w.Value = ev.Kv.Value
			}
			cur.Writes = append(cur.Writes, w)
		}
		if err := flush(); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("etcdstore: watch closed")
}

// parseKey splits a store key into its table and key ("" for the
// table's marker).
func (b *Backend) parseKey(k string) (table, key string, ok bool) {
	rest, ok := strings.CutPrefix(k, b.prefix)
	if !ok {
		return "", "", false
	}
	esc, tail, ok := strings.Cut(rest, "/")
	if !ok {
		return "", "", false
	}
	table, err := url.PathUnescape(esc)
	if err != nil {
		return "", "", false
	}
	switch {
	case tail == "m":
		return table, "", true
	case strings.HasPrefix(tail, "k/"):
		return table, tail[2:], true
	}
	return "", "", false
}
