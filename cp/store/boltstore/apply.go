package boltstore

import (
	"time"

	bolt "go.etcd.io/bbolt"
)

// applyLoop applies logged commits to bbolt, b.delay after the first
// of a batch (at once when a commit waits for a full log), until Close.
func (b *Backend) applyLoop() {
	defer close(b.done)
	t := time.NewTimer(b.delay)
	t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-b.kick:
			t.Reset(b.delay)
			select {
			case <-b.stop:
				t.Stop()
				return
			case <-t.C:
			case <-b.urgent:
				t.Stop()
			}
		case <-b.urgent:
		}
		if b.applyPending() != nil {
			// Kept in the log and laid over bbolt's snapshot: tried
			// again after the next delay.
			b.nudge()
		}
	}
}

// applyPending applies the logged commits to bbolt in one synced bbolt
// commit, then drops them from the overlay. Readers that took the
// overlay before still have it; those that take it after see them in
// bbolt's snapshot.
func (b *Backend) applyPending() error {
	b.mu.Lock()
	recs := b.pend
	b.mu.Unlock()
	var err error
	if len(recs) > 0 {
		err = b.db.Update(func(tx *bolt.Tx) error { return applyRecords(tx, recs) })
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if err == nil {
		// Only the applier removes, and commits are only appended: the
		// first len(recs) are still recs.
		b.pend = b.pend[len(recs):]
		if len(b.pend) == 0 {
			b.pend = nil
		}
	}
	b.applyErr = err
	close(b.applied)
	b.applied = make(chan struct{})
	return err
}

// applyRecords writes recs, in order, in the bbolt transaction tx, with
// the revisions they raise: the global one and each written table's.
func applyRecords(tx *bolt.Tx, recs []*record) error {
	revs := tx.Bucket(bucketRevs)
	for _, r := range recs {
		for _, o := range r.ops {
			bk, err := tx.CreateBucketIfNotExists(tableBucket(o.table))
			if err != nil {
				return err
			}
			if o.del {
				err = bk.Delete([]byte(o.key))
			} else {
				err = bk.Put([]byte(o.key), o.val)
			}
			if err != nil {
				return err
			}
		}
		if err := revs.Put(keyGlobal, u64(r.rev)); err != nil {
			return err
		}
		for _, table := range r.tables {
			if err := revs.Put([]byte(table), u64(r.rev)); err != nil {
				return err
			}
		}
	}
	return nil
}
