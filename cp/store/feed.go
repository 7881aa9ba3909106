package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// ErrCompacted: a feed was asked to start from a revision the backend no
// longer keeps the changes of (etcd compacted them, or an in-process feed
// dropped them from its bounded history). Load the state again and follow
// from the revision it was loaded at.
var ErrCompacted = errors.New("store: changes since that revision are no longer kept")

// ErrUnavailable: the backend cannot be reached or has no quorum (etcd).
// Errors wrapping it are *UnavailableError, which names the cause.
var ErrUnavailable = errors.New("store unavailable")

// ErrOutcomeUnknown: a write was sent and its answer lost (a timeout, a
// broken connection, an etcd leader that died with it): it may be
// committed or not. Errors that match it keep their own message.
var ErrOutcomeUnknown = errors.New("store: commit outcome unknown")

// OutcomeUnknown marks err as a write whose outcome is unknown: the
// result matches ErrOutcomeUnknown and, through err, whatever err matches.
func OutcomeUnknown(err error) error { return outcomeUnknownError{err} }

type outcomeUnknownError struct{ err error }

func (e outcomeUnknownError) Error() string        { return e.err.Error() }
func (e outcomeUnknownError) Unwrap() error        { return e.err }
func (e outcomeUnknownError) Is(target error) bool { return target == ErrOutcomeUnknown }

// UnavailableError is a call the backend could not answer; a write that
// fails with it was not committed (or, when the backend went away in the
// middle of a commit, may be committed and then reaches every follower).
type UnavailableError struct {
	// Backend names the backend ("etcd").
	Backend string
	Err     error
}

func (e *UnavailableError) Error() string        { return e.Backend + " unavailable: " + e.Err.Error() }
func (e *UnavailableError) Unwrap() error        { return e.Err }
func (e *UnavailableError) Is(target error) bool { return target == ErrUnavailable }

// Commit is what one committed transaction wrote to the tables a watch
// follows.
type Commit struct {
	// Rev is the revision of the commit. A Commit with no Tables is a
	// progress mark: every commit up to Rev has been delivered.
	Rev uint64
	// Tables are the followed tables the commit wrote (a commit may
	// write a table without changing a key: a type's empty set replaced
	// by an empty set).
	Tables []string
	// Writes are its key writes, by table and key.
	Writes []Write
}

// Write is one key written by a commit.
type Write struct {
	Table, Key string
	// Value is nil when the key was deleted.
	Value   []byte
	Deleted bool
}

// Watcher is a Backend shared with other processes that streams every
// commit, its own and theirs (etcd). A DB over a Backend that is not a
// Watcher (bbolt, the in-memory fake) is the only writer of its backend:
// it records its own commits and feeds Follow from them, so both kinds
// run the same code above the DB.
type Watcher interface {
	// Watch calls fn with every commit after rev that wrote a table whose
	// name begins with tablePrefix, in revision order (and progress
	// marks), until ctx ends, fn fails or the watch breaks; ErrCompacted
	// when the changes after rev are gone.
	Watch(ctx context.Context, after uint64, tablePrefix string, fn func(Commit) error) error
}

// Change is one committed write to one resource type.
type Change struct {
	TypeURL string
	// Version is the revision of the commit: the type's version from now.
	Version uint64
	// Put are the items created or replaced (a Replace puts every item
	// of the new set), Deleted the names removed.
	Put     []Item
	Deleted []string
}

// resPrefix is the prefix of every resource table.
const resPrefix = "res:"

// Revision returns the store's current revision: every commit up to it is
// visible to reads from now on.
func (d *DB) Revision(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("store: %w", err)
	}
	rev, err := d.be.Update(ctx, func(Tx) error { return nil })
	if err != nil {
		return 0, wrap(err)
	}
	return rev, nil
}

// Follow calls fn with the changes of every commit to resources after
// revision after, in revision order, one call per commit (rev is the
// commit's revision; a call without changes only says that every commit
// up to rev has been delivered). It returns when ctx ends (ctx's error),
// when fn fails (fn's error), or when the feed breaks: ErrCompacted when
// the changes after after are no longer kept, another error (etcd out of
// reach) otherwise; follow again from the last rev seen.
//
// On etcd the changes come from a watch, so every instance sees every
// instance's writes; on bbolt and the in-memory fake from the DB's own
// commits (it is the only writer), kept for a while so that a follower
// may start from a revision a little in the past.
func (d *DB) Follow(ctx context.Context, after uint64, fn func(rev uint64, changes []Change) error) error {
	deliver := func(c Commit) error { return fn(c.Rev, changesOf(c)) }
	if w, ok := d.be.(Watcher); ok {
		if err := w.Watch(ctx, after, resPrefix, deliver); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return wrap(err)
		}
		return ctx.Err()
	}
	return d.feed.follow(ctx, after, deliver)
}

// changesOf turns a commit's writes into one Change per resource type.
func changesOf(c Commit) []Change {
	var out []Change
	at := map[string]int{}
	change := func(table string) *Change {
		typeURL, ok := strings.CutPrefix(table, resPrefix)
		if !ok {
			return nil
		}
		i, seen := at[typeURL]
		if !seen {
			i = len(out)
			at[typeURL] = i
			out = append(out, Change{TypeURL: typeURL, Version: c.Rev})
		}
		return &out[i]
	}
	for _, t := range c.Tables {
		change(t)
	}
	for _, w := range c.Writes {
		ch := change(w.Table)
		if ch == nil || w.Key == "" || w.Key == emptyMarker {
			continue
		}
		if w.Deleted {
			ch.Deleted = append(ch.Deleted, w.Key)
		} else {
			ch.Put = append(ch.Put, Item{Name: w.Key, Value: w.Value})
		}
	}
	return out
}

// emptyMarker is the key Replace deletes to write an empty set over an
// empty set; it is never a resource.
const emptyMarker = "\x00"

// ---- the in-process feed of a backend that is not a Watcher ----

// Bounds of the in-process history: a follower may start from any
// revision the history still covers.
const (
	feedHistoryCommits = 1024
	feedHistoryBytes   = 64 << 20
)

type feed struct {
	mu sync.Mutex
	// base: the history holds every resource commit after base.
	base    uint64
	hist    []Commit
	bytes   int
	changed chan struct{} // closed and replaced on every commit
}

func newFeed(base uint64) *feed { return &feed{base: base, changed: make(chan struct{})} }

// recorder wraps a transaction and notes what it writes to resource
// tables.
type recorder struct {
	Tx
	tables []string
	writes []Write
}

func (r *recorder) Put(table, key string, val []byte) error {
	if err := r.Tx.Put(table, key, val); err != nil {
		return err
	}
	if strings.HasPrefix(table, resPrefix) {
		r.note(table)
		r.writes = append(r.writes, Write{Table: table, Key: key, Value: slices.Clone(val)})
	}
	return nil
}

func (r *recorder) Delete(table, key string) error {
	if err := r.Tx.Delete(table, key); err != nil {
		return err
	}
	if strings.HasPrefix(table, resPrefix) {
		r.note(table)
		r.writes = append(r.writes, Write{Table: table, Key: key, Deleted: true})
	}
	return nil
}

func (r *recorder) note(table string) {
	if !slices.Contains(r.tables, table) {
		r.tables = append(r.tables, table)
	}
}

// publish adds a commit to the history and wakes the followers (callers
// hold the DB's write lock, so commits come in revision order).
func (f *feed) publish(c Commit) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, w := range c.Writes {
		n += len(w.Table) + len(w.Key) + len(w.Value)
	}
	f.hist = append(f.hist, c)
	f.bytes += n
	for len(f.hist) > 1 && (len(f.hist) > feedHistoryCommits || f.bytes > feedHistoryBytes) {
		old := f.hist[0]
		for _, w := range old.Writes {
			f.bytes -= len(w.Table) + len(w.Key) + len(w.Value)
		}
		f.base = old.Rev
		f.hist[0] = Commit{}
		f.hist = f.hist[1:]
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *feed) follow(ctx context.Context, after uint64, fn func(Commit) error) error {
	for {
		f.mu.Lock()
		if after < f.base {
			f.mu.Unlock()
			return ErrCompacted
		}
		i, _ := slices.BinarySearchFunc(f.hist, after+1, func(c Commit, rev uint64) int {
			switch {
			case c.Rev < rev:
				return -1
			case c.Rev > rev:
				return 1
			}
			return 0
		})
		next := slices.Clone(f.hist[i:])
		ch := f.changed
		f.mu.Unlock()
		for _, c := range next {
			if err := fn(c); err != nil {
				return err
			}
			after = c.Rev
		}
		if len(next) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}
