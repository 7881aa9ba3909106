package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Drift counts are the drift detector's per-key state (the recent
// denials of one subject or task under one rule, and whether it acted
// within the window), kept in the store so that the instance that leads
// next continues counting where the last one stopped. Each count expires
// with its window (SweepExpired removes it), and a read ignores an
// expired one. Values are opaque to the store (cp/drift encodes them).

const tableDriftCounts = "drift_counts"

// Bounds of drift counts.
const (
	// MaxDriftCountBatch is the most counts one DriftCounts or
	// PutDriftCounts call reads or writes.
	MaxDriftCountBatch = 1000
	// MaxDriftCount bounds one encoded count (a rule's threshold is at
	// most 10,000 denials).
	MaxDriftCount = 256 << 10
	// maxDriftCountKey bounds a detector key (rule, kind and value).
	maxDriftCountKey = 4096
)

// DriftCount is one detector key's state, and until when it matters.
type DriftCount struct {
	Key string
	// Value is the state; nil deletes the key's count.
	Value   []byte
	Expires time.Time
}

type storedDriftCount struct {
	Key     string    `json:"k"`
	Value   []byte    `json:"v"`
	Expires time.Time `json:"e"`
}

// driftCountKey is the store key of a detector key: fixed length, so a
// long SPIFFE ID makes no long key.
func driftCountKey(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:])
}

func checkDriftKey(key string) error {
	if key == "" || len(key) > maxDriftCountKey {
		return fmt.Errorf("store: drift count key of %d bytes (1..%d)", len(key), maxDriftCountKey)
	}
	return nil
}

// DriftCounts returns the stored, unexpired counts of keys, by key.
func (d *DB) DriftCounts(ctx context.Context, keys []string) (map[string][]byte, error) {
	if len(keys) > MaxDriftCountBatch {
		return nil, fmt.Errorf("store: %d drift counts in one read, limit %d", len(keys), MaxDriftCountBatch)
	}
	for _, k := range keys {
		if err := checkDriftKey(k); err != nil {
			return nil, err
		}
	}
	now := d.now()
	out := make(map[string][]byte, len(keys))
	err := d.view(ctx, func(tx Tx) error {
		clear(out)
		for _, k := range keys {
			b, ok, err := tx.Get(tableDriftCounts, driftCountKey(k))
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			var c storedDriftCount
			if err := json.Unmarshal(b, &c); err != nil {
				return fmt.Errorf("store: decode drift count: %w", err)
			}
			// The key is stored with its hash: a collision reads as absent.
			if c.Key == k && now.Before(c.Expires) {
				out[k] = c.Value
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// PutDriftCounts writes (or, for a nil Value or an expiry already past,
// deletes) counts in one transaction.
func (d *DB) PutDriftCounts(ctx context.Context, counts []DriftCount) error {
	if len(counts) == 0 {
		return nil
	}
	if len(counts) > MaxDriftCountBatch {
		return fmt.Errorf("store: %d drift counts in one write, limit %d", len(counts), MaxDriftCountBatch)
	}
	now := d.now()
	enc := make([][]byte, len(counts))
	for i, c := range counts {
		if err := checkDriftKey(c.Key); err != nil {
			return err
		}
		if c.Value == nil || !now.Before(c.Expires) {
			continue
		}
		if len(c.Value) > MaxDriftCount {
			return fmt.Errorf("store: drift count of %d bytes, limit %d", len(c.Value), MaxDriftCount)
		}
		b, err := json.Marshal(storedDriftCount{Key: c.Key, Value: c.Value, Expires: c.Expires.UTC()})
		if err != nil {
			return fmt.Errorf("store: encode drift count: %w", err)
		}
		enc[i] = b
	}
	_, err := d.update(ctx, nil, func(tx Tx) error {
		for i, c := range counts {
			if enc[i] == nil {
				if err := tx.Delete(tableDriftCounts, driftCountKey(c.Key)); err != nil {
					return err
				}
				continue
			}
			if err := tx.Put(tableDriftCounts, driftCountKey(c.Key), enc[i]); err != nil {
				return err
			}
		}
		return nil
	})
	return err
}

// driftCountExpired reports whether a stored count is past its expiry.
func driftCountExpired(now time.Time) func([]byte) (bool, error) {
	return func(v []byte) (bool, error) {
		var c storedDriftCount
		if err := json.Unmarshal(v, &c); err != nil {
			return false, errors.Join(errors.New("store: decode drift count"), err)
		}
		return !now.Before(c.Expires), nil
	}
}
