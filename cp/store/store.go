// Package store is mandate-cp's durable state and the only owner of its
// versions: resources by type URL (policies, revocations, approvals,
// verification keys, and any later kind), the audit trail, signing keys,
// task owners, pending step-up approvals and approval use counts.
//
// A DB defines these records once over a Backend, a transactional
// key-value map: boltstore (one bbolt file, the embedded default for one
// mandate-cp), etcdstore (an etcd cluster shared by several instances)
// and NewMemory (an in-memory fake for unit tests). storetest holds the
// conformance suite every backend passes.
//
// Versions are revisions of the backend: every committed write gets a
// revision higher than every earlier one, global across types (etcd's
// revision, or a counter in the bbolt file), and a type's version is the
// revision of the last write to it. Every write commits together with its
// audit entries, or not at all.
package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Errors. Callers test them with errors.Is.
var (
	// ErrNotFound: a named record does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrQuota: a subject already holds as many pending approvals as
	// its quota allows.
	ErrQuota = errors.New("store: quota exceeded")
	// ErrExhausted: an approval has no use left.
	ErrExhausted = errors.New("store: approval uses exhausted")
	// ErrExpired: the record expired.
	ErrExpired = errors.New("store: expired")
	// ErrConflict: a record belongs to someone else, or a type changed
	// since the version a write was planned on.
	ErrConflict = errors.New("store: conflict")
)

// Limits of what a record may hold.
const (
	MaxNameLen    = 1024
	MaxTypeURLLen = 256
)

// DB is the control plane's store over a Backend. It is safe for
// concurrent use; with a shared backend (etcd), several DBs in several
// processes see one state.
type DB struct {
	be  Backend
	now func() time.Time
	kek *kek
	// feed and wmu: a backend that is not a Watcher has this DB as its
	// only writer; wmu orders its commits and feed keeps them for Follow.
	feed *feed
	wmu  sync.Mutex
}

// Option configures New.
type Option func(*DB) error

// WithClock sets the clock that stamps audit entries without a time.
func WithClock(now func() time.Time) Option {
	return func(d *DB) error {
		if now == nil {
			return errors.New("store: nil clock")
		}
		d.now = now
		return nil
	}
}

// New returns a DB over be; it owns be from now on (Close closes it,
// and New closes it when an option is refused).
func New(be Backend, opts ...Option) (*DB, error) {
	if be == nil {
		return nil, errors.New("store: nil backend")
	}
	d := &DB{be: be, now: time.Now}
	for _, o := range opts {
		if err := o(d); err != nil {
			_ = be.Close()
			return nil, err
		}
	}
	if _, ok := be.(Watcher); !ok {
		rev, err := be.Update(context.Background(), func(Tx) error { return nil })
		if err != nil {
			_ = be.Close()
			return nil, fmt.Errorf("store: read the revision: %w", err)
		}
		d.feed = newFeed(rev)
	}
	return d, nil
}

// Close closes the backend.
func (d *DB) Close() error {
	if err := d.be.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// update runs fn and appends audit in the same transaction.
func (d *DB) update(ctx context.Context, audit []AuditEntry, fn func(tx Tx) error) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("store: %w", err)
	}
	for _, e := range audit {
		if e.Action == "" {
			return 0, errors.New("store: audit entry without an action")
		}
	}
	body := func(tx Tx) error {
		if fn != nil {
			if err := fn(tx); err != nil {
				return err
			}
		}
		return d.appendAudit(tx, audit)
	}
	if d.feed == nil {
		rev, err := d.be.Update(ctx, body)
		if err != nil {
			return 0, wrap(err)
		}
		return rev, nil
	}
	// The only writer: record what the commit writes to resources and
	// hand it to the followers in commit order.
	d.wmu.Lock()
	defer d.wmu.Unlock()
	var rec *recorder
	rev, err := d.be.Update(ctx, func(tx Tx) error {
		rec = &recorder{Tx: tx}
		return body(rec)
	})
	if err != nil {
		return 0, wrap(err)
	}
	if rec != nil && len(rec.tables) > 0 {
		d.feed.publish(Commit{Rev: rev, Tables: rec.tables, Writes: rec.writes})
	}
	return rev, nil
}

func (d *DB) view(ctx context.Context, fn func(tx Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := d.be.View(ctx, fn); err != nil {
		return wrap(err)
	}
	return nil
}

func wrap(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("store: %w", err)
}

// ---- resources ----

// Item is one resource: its name and its encoded content (for mandate.v1
// types, the deterministic protobuf encoding).
type Item struct {
	Name  string
	Value []byte
}

func resTable(typeURL string) string { return "res:" + typeURL }

func checkType(typeURL string) error {
	if typeURL == "" || len(typeURL) > MaxTypeURLLen {
		return fmt.Errorf("store: bad type URL %q", typeURL)
	}
	return nil
}

func checkItems(typeURL string, items []Item) error {
	if err := checkType(typeURL); err != nil {
		return err
	}
	seen := make(map[string]struct{}, len(items))
	for _, it := range items {
		if it.Name == "" || len(it.Name) > MaxNameLen {
			return fmt.Errorf("store: %s: bad resource name %.64q", typeURL, it.Name)
		}
		if _, dup := seen[it.Name]; dup {
			return fmt.Errorf("store: %s %q given twice", typeURL, it.Name)
		}
		seen[it.Name] = struct{}{}
	}
	return nil
}

// Put creates or replaces items of a type in one transaction with the
// audit entries, and returns the type's new version.
func (d *DB) Put(ctx context.Context, typeURL string, items []Item, audit ...AuditEntry) (uint64, error) {
	if len(items) == 0 {
		return 0, fmt.Errorf("store: empty put of %s", typeURL)
	}
	return d.Update(ctx, typeURL, items, nil, audit...)
}

// Delete removes named items of a type in one transaction and returns
// the type's new version; ErrNotFound, and nothing removed, when one of
// them does not exist.
func (d *DB) Delete(ctx context.Context, typeURL string, names []string, audit ...AuditEntry) (uint64, error) {
	if len(names) == 0 {
		return 0, fmt.Errorf("store: empty delete of %s", typeURL)
	}
	return d.Update(ctx, typeURL, nil, names, audit...)
}

// Update puts items and deletes names of one type in one transaction with
// the audit entries, and returns the type's new version. A name may not
// be both put and deleted; ErrNotFound, and nothing written, when a
// deleted name does not exist.
func (d *DB) Update(ctx context.Context, typeURL string, put []Item, del []string, audit ...AuditEntry) (uint64, error) {
	if err := checkItems(typeURL, put); err != nil {
		return 0, err
	}
	if len(put) == 0 && len(del) == 0 {
		return 0, fmt.Errorf("store: empty update of %s", typeURL)
	}
	for _, name := range del {
		if slices.ContainsFunc(put, func(it Item) bool { return it.Name == name }) {
			return 0, fmt.Errorf("store: %s %q both put and deleted", typeURL, name)
		}
	}
	return d.update(ctx, audit, func(tx Tx) error {
		for _, name := range del {
			_, ok, err := tx.Get(resTable(typeURL), name)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%s %q: %w", typeURL, name, ErrNotFound)
			}
			if err := tx.Delete(resTable(typeURL), name); err != nil {
				return err
			}
		}
		for _, it := range put {
			if err := tx.Put(resTable(typeURL), it.Name, it.Value); err != nil {
				return err
			}
		}
		return nil
	})
}

// Replace makes items the whole set of a type in one transaction and
// returns the type's new version. base is the version of the type the
// new set was made from: when another commit wrote the type since (an
// other instance's, on a shared backend), nothing is written and the
// error wraps ErrConflict, so a set planned on a stale copy never drops
// what that commit added.
func (d *DB) Replace(ctx context.Context, typeURL string, base uint64, items []Item, audit ...AuditEntry) (uint64, error) {
	if err := checkItems(typeURL, items); err != nil {
		return 0, err
	}
	keep := make(map[string]struct{}, len(items))
	for _, it := range items {
		keep[it.Name] = struct{}{}
	}
	return d.update(ctx, audit, func(tx Tx) error {
		if rev, err := tx.Rev(resTable(typeURL)); err != nil {
			return err
		} else if rev != base {
			return fmt.Errorf("%s changed since version %d (now %d): %w", typeURL, base, rev, ErrConflict)
		}
		var drop []string
		err := tx.Scan(resTable(typeURL), "", func(k string, _ []byte) (bool, error) {
			if _, ok := keep[k]; !ok {
				drop = append(drop, k)
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		for _, k := range drop {
			if err := tx.Delete(resTable(typeURL), k); err != nil {
				return err
			}
		}
		for _, it := range items {
			if err := tx.Put(resTable(typeURL), it.Name, it.Value); err != nil {
				return err
			}
		}
		if len(drop) == 0 && len(items) == 0 {
			// An empty set replacing an empty set is still a write.
			return tx.Delete(resTable(typeURL), "\x00")
		}
		return nil
	})
}

// List returns every item of a type, sorted by name, and the type's
// version (0 before its first write), from one snapshot.
func (d *DB) List(ctx context.Context, typeURL string) ([]Item, uint64, error) {
	if err := checkType(typeURL); err != nil {
		return nil, 0, err
	}
	var (
		out []Item
		v   uint64
	)
	err := d.view(ctx, func(tx Tx) error {
		out = out[:0]
		var err error
		if v, err = tx.Rev(resTable(typeURL)); err != nil {
			return err
		}
		return tx.Scan(resTable(typeURL), "", func(k string, val []byte) (bool, error) {
			out = append(out, Item{Name: k, Value: slices.Clone(val)})
			return true, nil
		})
	})
	if err != nil {
		return nil, 0, err
	}
	return out, v, nil
}

// Version returns a type's version (0 before its first write).
func (d *DB) Version(ctx context.Context, typeURL string) (uint64, error) {
	if err := checkType(typeURL); err != nil {
		return 0, err
	}
	var v uint64
	err := d.view(ctx, func(tx Tx) error {
		var err error
		v, err = tx.Rev(resTable(typeURL))
		return err
	})
	return v, err
}
