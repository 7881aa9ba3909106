package store

import (
	"context"
	"slices"
	"sort"
	"sync"
)

// NewMemory returns a DB over an in-memory backend: the fake for unit
// tests (nothing survives Close). It passes the same conformance suite as
// the durable backends.
func NewMemory(opts ...Option) *DB {
	d, err := New(NewMemoryBackend(), opts...)
	if err != nil {
		panic(err) // only a bad Option fails, a programming error in a test
	}
	return d
}

// NewMemoryBackend returns an empty in-memory backend.
func NewMemoryBackend() Backend {
	return &memBackend{tables: map[string]map[string][]byte{}, revs: map[string]uint64{}}
}

type memBackend struct {
	mu     sync.RWMutex
	rev    uint64
	tables map[string]map[string][]byte
	revs   map[string]uint64
	closed bool
}

type memTx struct {
	b       *memBackend
	write   bool
	undo    []func()
	written map[string]bool
}

func (b *memBackend) Update(ctx context.Context, fn func(Tx) error) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, errClosed
	}
	tx := &memTx{b: b, write: true, written: map[string]bool{}}
	if err := fn(tx); err != nil {
		for i := len(tx.undo) - 1; i >= 0; i-- {
			tx.undo[i]()
		}
		return 0, err
	}
	if len(tx.written) > 0 {
		b.rev++
		for t := range tx.written {
			b.revs[t] = b.rev
		}
	}
	return b.rev, nil
}

func (b *memBackend) View(ctx context.Context, fn func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return errClosed
	}
	return fn(&memTx{b: b})
}

func (b *memBackend) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

func (t *memTx) Get(table, key string) ([]byte, bool, error) {
	v, ok := t.b.tables[table][key]
	return slices.Clone(v), ok, nil
}

func (t *memTx) Put(table, key string, val []byte) error {
	if !t.write {
		return errReadOnly
	}
	m := t.b.tables[table]
	if m == nil {
		m = map[string][]byte{}
		t.b.tables[table] = m
	}
	old, had := m[key]
	t.undo = append(t.undo, func() {
		if had {
			m[key] = old
		} else {
			delete(m, key)
		}
	})
	m[key] = append([]byte{}, val...)
	t.written[table] = true
	return nil
}

func (t *memTx) Delete(table, key string) error {
	if !t.write {
		return errReadOnly
	}
	t.written[table] = true
	m := t.b.tables[table]
	old, had := m[key]
	if !had {
		return nil
	}
	t.undo = append(t.undo, func() { m[key] = old })
	delete(m, key)
	return nil
}

func (t *memTx) Scan(table, from string, fn func(string, []byte) (bool, error)) error {
	m := t.b.tables[table]
	keys := make([]string, 0, len(m))
	for k := range m {
		if k >= from {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		more, err := fn(k, slices.Clone(m[k]))
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func (t *memTx) Rev(table string) (uint64, error) { return t.b.revs[table], nil }
