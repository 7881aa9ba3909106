// Package boltstore is the store backend in one bbolt file
// (<data-dir>/mandate.db) and its write-ahead log (<data-dir>/mandate.wal):
// the embedded default of a single mandate-cp.
//
// Every table is a bucket; bucket "_revs" holds the global revision
// counter and each table's revision. A write is one frame appended to the
// log and synced (one fdatasync) before it returns: a write that returned
// nil survives a crash. The log's commits are applied to bbolt in batches
// shortly after (bbolt's synced commits: the pages, then the meta page),
// and applied when the file is opened if a crash came first. An update
// that writes nothing commits nothing. A file written by an earlier
// mandate-cp (one bucket per record kind, a version counter per type) is
// converted in place when opened.
package boltstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
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

// Backend is a bbolt file and its write-ahead log as a store.Backend.
//
// A commit is one frame appended to the log and synced (one fdatasync of
// a few hundred bytes, where a bbolt commit syncs its pages and then its
// meta page): it is durable, and visible, when Update returns. A
// goroutine then applies the logged commits to bbolt in batches (a
// normal bbolt commit, synced), after which the log starts again from
// its beginning. Until then readers see bbolt's snapshot with the logged
// commits above it laid over it. Opening the file applies what the log
// holds beyond bbolt's revision (a crash between the two).
type Backend struct {
	db  *bolt.DB
	log *logFile

	// wmu: one commit at a time, held across the log's write and sync.
	wmu     sync.Mutex
	failed  error  // set when a log write failed: every later commit fails
	buf     []byte // frame buffer
	appends int    // frames written (for tests)

	mu       sync.Mutex
	pend     []*record     // logged, not yet in bbolt; ascending revisions
	applied  chan struct{} // closed after each apply pass, then replaced
	applyErr error         // the last apply pass's error

	delay     time.Duration // applyDelay
	limit     int64         // logLimit
	kick      chan struct{}
	urgent    chan struct{} // a commit waits for the log to be applied
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// applyDelay is how long logged commits wait before they are applied to
// bbolt: the commits of that window share one bbolt commit, whose syncs
// then rarely meet a commit's own.
const applyDelay = 100 * time.Millisecond

// OpenBackend opens the file alone (Open wraps it in a DB).
func OpenBackend(ctx context.Context, dataDir string) (*Backend, error) {
	return openBackend(ctx, dataDir, applyDelay, InitialMmapSize)
}

// openBackend is OpenBackend with the applier's batching delay (commits
// are applied to bbolt delay after the first of a batch; tests hold them
// in the log) and the file's initial mapping chosen.
func openBackend(ctx context.Context, dataDir string, delay time.Duration, mmapSize int) (*Backend, error) {
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
	db, err := bolt.Open(path, 0o600, boltOptions(mmapSize))
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
	// The log is opened under bbolt's file lock: one process at a time.
	log, recs, err := openLog(dataDir)
	if err == nil {
		err = recoverLog(db, recs)
		if err != nil {
			_ = log.close()
		}
	}
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("boltstore: %w", err)
	}
	b := &Backend{db: db, log: log, delay: delay, limit: logLimit, applied: make(chan struct{}),
		kick: make(chan struct{}, 1), urgent: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go b.applyLoop()
	return b, nil
}

// recoverLog applies to db the log's commits above its revision. The
// log's chain starts at most one revision above bbolt's (it starts again
// only once bbolt holds all of it): a chain that starts higher means
// commits are missing (the database file replaced by an older one, or
// deleted without its log), and the store refuses to open rather than
// serve a history with a hole.
func recoverLog(db *bolt.DB, recs []*record) error {
	var top uint64
	if err := db.View(func(tx *bolt.Tx) error {
		top = getU64(tx.Bucket(bucketRevs).Get(keyGlobal))
		return nil
	}); err != nil {
		return err
	}
	i := sort.Search(len(recs), func(i int) bool { return recs[i].rev > top })
	todo := recs[i:]
	if len(todo) == 0 {
		return nil
	}
	if todo[0].rev != top+1 {
		return fmt.Errorf("the write-ahead log %s resumes at revision %d but %s is at %d: commits are missing (was %s replaced or deleted without its log?)",
			LogFileName, todo[0].rev, FileName, top, FileName)
	}
	if err := db.Update(func(tx *bolt.Tx) error { return applyRecords(tx, todo) }); err != nil {
		return fmt.Errorf("apply the write-ahead log: %w", err)
	}
	return nil
}

// InitialMmapSize is the address space mapped for the file when it is
// opened. A bbolt commit (the applier's) that needs the file past the
// mapping remaps it, waiting for every reader, and, while the mapping is
// below bbolt's 16 MiB allocation step, grows the file by doubling, each
// growth a truncate and a full fsync: a fresh file took five of them in
// its first few hundred commits, each a latency spike of the applier and
// of the reads and full-log writes waiting on it. Mapped large,
// the file grows in 16 MiB steps and is remapped only past 1 GiB (about
// a million revocation records with their audit entries). Address space
// only: memory is used as the file fills.
const InitialMmapSize = 1 << 30

// boltOptions are the options of the file: the mapping above, and
// bbolt's hash-map freelist (allocation does not scan a list of free
// pages, which grows with a fragmented file). Neither changes what is
// synced: every commit still syncs its pages, then its meta page.
func boltOptions(mmapSize int) *bolt.Options {
	return &bolt.Options{Timeout: time.Second, InitialMmapSize: mmapSize, FreelistType: bolt.FreelistMapType}
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
