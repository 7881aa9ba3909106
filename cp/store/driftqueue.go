package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// The drift queue carries the out-of-intent events replicas report to
// any instance of a fleet to the one instance that counts them (the
// leader): instances never talk to each other, so the events go through
// the store. Values are opaque to the store (cp/drift encodes them).

const tableDriftQueue = "drift_queue"

// Bounds of the drift queue.
const (
	// MaxDriftBatch is the most events one EnqueueDrift or TakeDrift
	// moves.
	MaxDriftBatch = 1000
	// MaxDriftEvent bounds one encoded event.
	MaxDriftEvent = 16 << 10
)

// EnqueueDrift appends events, reported to the instance named from, to
// the fleet's drift queue in one transaction, after every event already
// queued.
func (d *DB) EnqueueDrift(ctx context.Context, from string, events [][]byte) error {
	if from == "" || len(from) > MaxNameLen {
		return errors.New("store: drift events need the name of the instance they came to")
	}
	if len(events) == 0 {
		return nil
	}
	if len(events) > MaxDriftBatch {
		return fmt.Errorf("store: %d drift events in one batch, limit %d", len(events), MaxDriftBatch)
	}
	for _, e := range events {
		if len(e) == 0 || len(e) > MaxDriftEvent {
			return fmt.Errorf("store: drift event of %d bytes (1..%d)", len(e), MaxDriftEvent)
		}
	}
	// Keys sort by time of arrival (the clocks of instances agree
	// closely enough for a sliding window of seconds to minutes); the
	// instance and the index keep two batches of one nanosecond apart.
	at := d.now().UnixNano()
	_, err := d.update(ctx, nil, func(tx Tx) error {
		for i, e := range events {
			if err := tx.Put(tableDriftQueue, fmt.Sprintf("%020d/%s/%05d", at, from, i), e); err != nil {
				return err
			}
		}
		return nil
	})
	return err
}

// TakeDrift removes and returns, oldest first, up to max queued events:
// an event is taken once, by one instance, whichever takes it first.
func (d *DB) TakeDrift(ctx context.Context, max int) ([][]byte, error) {
	if max <= 0 || max > MaxDriftBatch {
		return nil, fmt.Errorf("store: take of %d drift events (1..%d)", max, MaxDriftBatch)
	}
	var out [][]byte
	_, err := d.update(ctx, nil, func(tx Tx) error {
		out = out[:0]
		var keys []string
		err := tx.Scan(tableDriftQueue, "", func(k string, v []byte) (bool, error) {
			keys = append(keys, k)
			out = append(out, slices.Clone(v))
			return len(keys) < max, nil
		})
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := tx.Delete(tableDriftQueue, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
