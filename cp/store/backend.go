package store

import (
	"context"
	"errors"
)

// Backend is the transactional key-value map a DB keeps its records in:
// named tables of keys in byte order, and one revision counter. The DB
// defines every record on top of it, so bbolt, etcd and the in-memory
// fake differ only here.
type Backend interface {
	// Update runs fn in a read-write transaction and commits what it
	// wrote, atomically and durably, or nothing when fn fails. It returns
	// the revision of the commit (the current revision when fn wrote
	// nothing). A backend shared by several processes may run fn more
	// than once, when a concurrent commit changed what fn read: fn must
	// not have side effects outside tx.
	Update(ctx context.Context, fn func(tx Tx) error) (uint64, error)
	// View runs fn over a consistent snapshot.
	View(ctx context.Context, fn func(tx Tx) error) error
	// Close releases the backend.
	Close() error
}

// Tx is one transaction. Reads see the snapshot the transaction started
// from, plus its own Puts and Deletes for Get; Scan does not see the
// transaction's own writes (a DB never scans a table it wrote before in
// the same transaction).
type Tx interface {
	// Get returns the value of key in table; ok is false when there is
	// none.
	Get(table, key string) (val []byte, ok bool, err error)
	// Put sets key in table.
	Put(table, key string, val []byte) error
	// Delete removes key from table (nothing when it is absent).
	Delete(table, key string) error
	// Scan calls fn for every key of table at or after from, in byte
	// order, until fn returns false or an error.
	Scan(table, from string, fn func(key string, val []byte) (bool, error)) error
	// Rev returns the revision of the last commit that wrote to table
	// (0 when none has).
	Rev(table string) (uint64, error)
}

var (
	errClosed   = errors.New("closed")
	errReadOnly = errors.New("write in a read-only transaction")
)
