// Package boltstore is the store backend in one bbolt file
// (<data-dir>/mandate.db): the embedded default of a single mandate-cp.
//
// Every table is a bucket; bucket "_revs" holds the global revision
// counter and each table's revision. Every write is one bbolt
// transaction, synced to disk before it returns (bbolt's default: the
// pages, then the meta page, two fdatasyncs): a write that returned nil
// survives a crash. An update that writes nothing commits nothing. A file
// written by an earlier mandate-cp (one bucket per record kind, a version
// counter per type) is converted in place when opened.
package boltstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/mandate-dev/mandate/cp/store"
)

// FileName is the database file inside the data directory.
const FileName = "mandate.db"

var (
	bucketRevs = []byte("_revs")
	keyGlobal  = []byte("\x00global")
)

func tableBucket(table string) []byte { return []byte("t/" + table) }

// Open opens (creating if needed) <dataDir>/mandate.db and returns a DB
// over it. It fails after a second if another process holds the file.
func Open(ctx context.Context, dataDir string, opts ...store.Option) (*store.DB, error) {
	be, err := OpenBackend(ctx, dataDir)
	if err != nil {
		return nil, err
	}
	return store.New(be, opts...)
}

// Backend is a bbolt file as a store.Backend.
type Backend struct{ db *bolt.DB }

// OpenBackend opens the file alone (Open wraps it in a DB).
func OpenBackend(ctx context.Context, dataDir string) (*Backend, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: open: %w", err)
	}
	if dataDir == "" {
		return nil, errors.New("boltstore: empty data directory")
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("boltstore: create data directory: %w", err)
	}
	path := filepath.Join(dataDir, FileName)
	db, err := bolt.Open(path, 0o600, boltOptions())
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("boltstore: %s is locked by another process (another mandate-cp on the same --data-dir?): %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketRevs) == nil && tx.Bucket(legacyVersions) != nil {
			return migrate(tx)
		}
		_, err := tx.CreateBucketIfNotExists(bucketRevs)
		return err
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("boltstore: prepare %s: %w", path, err)
	}
	return &Backend{db: db}, nil
}

// InitialMmapSize is the address space mapped for the file when it is
// opened. A write that needs the file past the mapping remaps it (waiting
// for every reader) and, while the mapping is below bbolt's 16 MiB
// allocation step, grows the file by doubling, each growth a truncate and
// a full fsync: a fresh file took five of them in its first few hundred
// writes, each a latency spike of the write that hit it. Mapped large,
// the file grows in 16 MiB steps and is remapped only past 1 GiB (about
// a million revocation records with their audit entries). Address space
// only: memory is used as the file fills.
const InitialMmapSize = 1 << 30

// boltOptions are the options of the file: the mapping above, and
// bbolt's hash-map freelist (allocation does not scan a list of free
// pages, which grows with a fragmented file). Neither changes what is
// synced: every commit still syncs its pages, then its meta page.
func boltOptions() *bolt.Options {
	return &bolt.Options{Timeout: time.Second, InitialMmapSize: InitialMmapSize, FreelistType: bolt.FreelistMapType}
}

// Close closes the file.
func (b *Backend) Close() error { return b.db.Close() }

// Update implements store.Backend.
func (b *Backend) Update(ctx context.Context, fn func(store.Tx) error) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	btx, err := b.db.Begin(true)
	if err != nil {
		return 0, err
	}
	// Rolled back unless committed, also when fn panics (a no-op after
	// Commit).
	defer func() { _ = btx.Rollback() }()
	t := &tx{tx: btx, written: map[string]bool{}}
	rev, err := runUpdate(t, fn)
	if err != nil || len(t.written) == 0 {
		// fn failed, or wrote nothing: no commit (bbolt would still
		// write and sync a meta page and the freelist).
		return rev, err
	}
	if err := btx.Commit(); err != nil {
		return 0, err
	}
	return rev, nil
}

// runUpdate runs fn in t and raises the revisions of what it wrote.
func runUpdate(t *tx, fn func(store.Tx) error) (uint64, error) {
	if err := fn(t); err != nil {
		return 0, err
	}
	revs := t.tx.Bucket(bucketRevs)
	rev := getU64(revs.Get(keyGlobal))
	if len(t.written) == 0 {
		return rev, nil
	}
	rev++
	if err := revs.Put(keyGlobal, u64(rev)); err != nil {
		return 0, err
	}
	for table := range t.written {
		if err := revs.Put([]byte(table), u64(rev)); err != nil {
			return 0, err
		}
	}
	return rev, nil
}

// View implements store.Backend.
func (b *Backend) View(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return b.db.View(func(btx *bolt.Tx) error { return fn(&tx{tx: btx}) })
}

type tx struct {
	tx      *bolt.Tx
	written map[string]bool
}

func (t *tx) Get(table, key string) ([]byte, bool, error) {
	bk := t.tx.Bucket(tableBucket(table))
	if bk == nil {
		return nil, false, nil
	}
	v := bk.Get([]byte(key))
	if v == nil {
		return nil, false, nil
	}
	return append([]byte{}, v...), true, nil
}

func (t *tx) bucket(table string) (*bolt.Bucket, error) {
	if t.written == nil {
		return nil, errors.New("write in a read-only transaction")
	}
	t.written[table] = true
	return t.tx.CreateBucketIfNotExists(tableBucket(table))
}

func (t *tx) Put(table, key string, val []byte) error {
	if key == "" {
		return errors.New("empty key")
	}
	bk, err := t.bucket(table)
	if err != nil {
		return err
	}
	if val == nil {
		val = []byte{}
	}
	return bk.Put([]byte(key), val)
}

func (t *tx) Delete(table, key string) error {
	bk, err := t.bucket(table)
	if err != nil || key == "" {
		return err
	}
	return bk.Delete([]byte(key))
}

func (t *tx) Scan(table, from string, fn func(string, []byte) (bool, error)) error {
	bk := t.tx.Bucket(tableBucket(table))
	if bk == nil {
		return nil
	}
	c := bk.Cursor()
	for k, v := c.Seek([]byte(from)); k != nil; k, v = c.Next() {
		more, err := fn(string(k), append([]byte{}, v...))
		if err != nil || !more {
			return err
		}
	}
	return nil
}

func (t *tx) Rev(table string) (uint64, error) {
	return getU64(t.tx.Bucket(bucketRevs).Get([]byte(table))), nil
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func getU64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
