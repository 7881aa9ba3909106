package boltstore

import (
	"context"
	"errors"
	"fmt"
	"sort"

	bolt "go.etcd.io/bbolt"

	"github.com/mandate-dev/mandate/cp/store"
)

// Update implements store.Backend: fn runs over bbolt's snapshot with
// the logged commits above it, and what it wrote becomes one frame of
// the log, synced before Update returns. An update that writes nothing
// writes nothing to the log.
func (b *Backend) Update(ctx context.Context, fn func(store.Tx) error) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b.wmu.Lock()
	defer b.wmu.Unlock()
	if b.failed != nil {
		return 0, b.failed
	}
	v, err := b.snapshot()
	if err != nil {
		return 0, err
	}
	// Released when Update returns, also when fn panics.
	defer v.close()
	w := newRecord()
	if err := fn(&tx{view: v, w: w}); err != nil {
		return 0, err
	}
	if len(w.ops) == 0 {
		return v.rev(), nil
	}
	w.rev = v.rev() + 1
	// Released before the write, which may wait for the applier: bbolt
	// grows its mapping of the file only once no read transaction is
	// open, so an applier that must grow it would wait for this one.
	v.close()
	if err := b.write(ctx, w); err != nil {
		return 0, err
	}
	return w.rev, nil
}

// write appends w to the log (callers hold wmu) and hands it to the
// applier.
func (b *Backend) write(ctx context.Context, w *record) error {
	b.mu.Lock()
	restart := len(b.pend) == 0
	b.mu.Unlock()
	for !restart && b.log.off > b.limit {
		// A long log that bbolt has not caught up with: have it applied
		// now and wait, so the log starts again rather than grow
		// without bound.
		b.mu.Lock()
		sig := b.applied
		b.mu.Unlock()
		select {
		case b.urgent <- struct{}{}:
		default:
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("boltstore: the write-ahead log is full and the database is catching up: %w", ctx.Err())
		case <-b.stop:
			return errors.New("boltstore: closed")
		case <-sig:
		}
		b.mu.Lock()
		restart = len(b.pend) == 0
		err := b.applyErr
		b.mu.Unlock()
		if !restart && err != nil {
			return fmt.Errorf("boltstore: the write-ahead log is full and applying it to the database fails: %w", err)
		}
	}
	frame := w.appendFrame(b.buf[:0])
	if cap(frame) <= 1<<20 {
		b.buf = frame
	}
	if uint64(len(frame)-frameHeader) > maxPayload {
		return fmt.Errorf("boltstore: a commit of %d bytes is over the write-ahead log's limit of %d", len(frame)-frameHeader, maxPayload)
	}
	if err := b.log.append(frame, restart); err != nil {
		// The frame may be on disk whole (and then applied when the
		// file is next opened), or not: the outcome is unknown, and what
		// the log holds after it is too, so no other commit follows.
		b.failed = fmt.Errorf("boltstore: an earlier write to the write-ahead log failed (restart mandate-cp): %w", err)
		return store.OutcomeUnknown(fmt.Errorf("boltstore: write-ahead log: %w", err))
	}
	b.appends++
	b.mu.Lock()
	b.pend = append(b.pend, w)
	b.mu.Unlock()
	b.nudge()
	return nil
}

func (b *Backend) nudge() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// View implements store.Backend.
func (b *Backend) View(ctx context.Context, fn func(store.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v, err := b.snapshot()
	if err != nil {
		return err
	}
	defer v.close()
	return fn(&tx{view: v})
}

// view is a consistent state: a bbolt snapshot and the logged commits
// above its revision.
type view struct {
	btx  *bolt.Tx
	base uint64    // the snapshot's revision
	over []*record // commits above it, ascending
}

// snapshot takes the logged commits, then bbolt's snapshot. In that
// order, a commit the applier moved to bbolt in between is in the
// snapshot, so none goes missing.
func (b *Backend) snapshot() (view, error) {
	b.mu.Lock()
	pend := b.pend
	b.mu.Unlock()
	btx, err := b.db.Begin(false)
	if err != nil {
		return view{}, err
	}
	base := getU64(btx.Bucket(bucketRevs).Get(keyGlobal))
	i := sort.Search(len(pend), func(i int) bool { return pend[i].rev > base })
	return view{btx: btx, base: base, over: pend[i:]}, nil
}

func (v view) rev() uint64 {
	if len(v.over) > 0 {
		return v.over[len(v.over)-1].rev
	}
	return v.base
}

func (v view) close() { _ = v.btx.Rollback() }

// Close stops the applier, applies what the log still holds and closes
// the files.
func (b *Backend) Close() error {
	b.closeOnce.Do(func() {
		close(b.stop)
		<-b.done
		b.wmu.Lock()
		defer b.wmu.Unlock()
		b.closeErr = errors.Join(b.applyPending(), b.log.close(), b.db.Close())
	})
	return b.closeErr
}
