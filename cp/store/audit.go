package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// AuditEntry is one line of the audit trail.
type AuditEntry struct {
	// Seq is assigned by the store, increasing with every entry.
	Seq uint64 `json:"seq"`
	// Time defaults to the store's clock when zero.
	Time time.Time `json:"time"`
	// Actor is the SPIFFE ID of who acted.
	Actor  string `json:"actor"`
	Action string `json:"action"`
	Object string `json:"object"`
	Detail string `json:"detail,omitempty"`
}

// The trail is kept in blocks: the entries one transaction appends are
// one key of table "audit", named by the sequence number of its first
// entry (16 hex digits, so keys sort by sequence). Table "meta" key
// "audit" holds the next and the first sequence number kept and the
// latest entry time seen.
//
// Table "audit_time" lets AuditLog seek instead of reading the whole
// trail. Entry times come from callers' clocks, which may step back, so
// the index is over the running maximum of the times: it holds one key
// (time, block) for every block whose latest entry is later than every
// earlier block's. Keys sort by time, then block, and both rise together,
// so the first key at or after since names the first block whose running
// maximum reaches since; every block before it is older than since.
// Entries from there on are checked one by one.
const (
	tableAudit     = "audit"
	tableAuditTime = "audit_time"
	tableMeta      = "meta"
	metaAudit      = "audit"
)

type auditMeta struct {
	Next  uint64    `json:"next"`
	First uint64    `json:"first"`
	Max   time.Time `json:"max"`
}

func seqKey(seq uint64) string { return fmt.Sprintf("%016x", seq) }

func parseSeq(k string) (uint64, error) {
	if len(k) != 16 {
		return 0, fmt.Errorf("bad audit key %q", k)
	}
	return strconv.ParseUint(k, 16, 64)
}

// timeKey sorts by time: seconds with the sign bit flipped, then nanos.
func timeKey(t time.Time) string {
	return fmt.Sprintf("%016x%08x", uint64(t.Unix())^(1<<63), uint32(t.Nanosecond()))
}

const timeKeyLen = 24

func readAuditMeta(tx Tx) (auditMeta, error) {
	m := auditMeta{Next: 1, First: 1}
	b, ok, err := tx.Get(tableMeta, metaAudit)
	if err != nil || !ok {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("decode audit meta: %w", err)
	}
	return m, nil
}

func writeAuditMeta(tx Tx, m auditMeta) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return tx.Put(tableMeta, metaAudit, b)
}

// appendAudit writes entries as one block.
func (d *DB) appendAudit(tx Tx, entries []AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	m, err := readAuditMeta(tx)
	if err != nil {
		return err
	}
	block := make([]AuditEntry, len(entries))
	var latest time.Time
	for i, e := range entries {
		e.Seq = m.Next + uint64(i)
		if e.Time.IsZero() {
			e.Time = d.now()
		}
		e.Time = e.Time.UTC()
		if e.Time.After(latest) {
			latest = e.Time
		}
		block[i] = e
	}
	b, err := json.Marshal(block)
	if err != nil {
		return err
	}
	key := seqKey(m.Next)
	if err := tx.Put(tableAudit, key, b); err != nil {
		return err
	}
	if latest.After(m.Max) {
		if err := tx.Put(tableAuditTime, timeKey(latest)+key, nil); err != nil {
			return err
		}
		m.Max = latest
	}
	m.Next += uint64(len(block))
	return writeAuditMeta(tx, m)
}

// AppendAudit appends entries to the audit trail in one transaction.
func (d *DB) AppendAudit(ctx context.Context, entries ...AuditEntry) error {
	if len(entries) == 0 {
		return errors.New("store: no audit entry")
	}
	_, err := d.update(ctx, entries, nil)
	return err
}

// AuditLog returns entries whose time is not before since, oldest (lowest
// sequence number) first, at most limit of them (limit <= 0 means 1000).
// It seeks through the time index: its cost is in the entries returned,
// plus those a backward clock step left among them, not in the size of
// the trail.
func (d *DB) AuditLog(ctx context.Context, since time.Time, limit int) ([]AuditEntry, error) {
	if limit <= 0 {
		limit = 1000
	}
	var out []AuditEntry
	err := d.view(ctx, func(tx Tx) error {
		out = out[:0]
		start, err := firstAuditBlockSince(tx, since)
		if err != nil || start == "" {
			return err // no entry reaches since
		}
		return scanAudit(ctx, tx, start, func(e AuditEntry) bool {
			if !e.Time.Before(since) {
				out = append(out, e)
			}
			return len(out) < limit
		})
	})
	return out, err
}

// AuditNewest returns the newest limit entries whose time is not before
// since (limit <= 0 means 1000), oldest first. It reads back from the end
// of the trail, so its cost is in the entries returned, not in the size of
// the trail, however many entries since lets through.
func (d *DB) AuditNewest(ctx context.Context, since time.Time, limit int) ([]AuditEntry, error) {
	if limit <= 0 {
		limit = 1000
	}
	var out []AuditEntry
	err := d.view(ctx, func(tx Tx) error {
		m, err := readAuditMeta(tx)
		if err != nil {
			return err
		}
		first, err := firstAuditBlockSince(tx, since)
		if err != nil || first == "" {
			return err // no entry reaches since
		}
		floor, err := parseSeq(first)
		if err != nil {
			return err
		}
		// Read the last window entries; widen the window while entries
		// older than since (a clock stepped back) leave fewer than limit.
		for window := uint64(limit); ; window *= 4 {
			start := floor
			if m.Next > window && m.Next-window > floor {
				start = m.Next - window
			}
			from, err := auditBlockAtOrBefore(tx, start, floor)
			if err != nil {
				return err
			}
			out = out[:0]
			err = scanAudit(ctx, tx, seqKey(from), func(e AuditEntry) bool {
				if e.Seq >= start && !e.Time.Before(since) {
					out = append(out, e)
				}
				return true
			})
			if err != nil {
				return err
			}
			if len(out) >= limit || start == floor {
				break
			}
		}
		if len(out) > limit {
			out = out[len(out)-limit:]
		}
		return nil
	})
	return out, err
}

// firstAuditBlockSince returns the key of the first block whose running
// maximum time reaches since, through the time index ("" when none does).
func firstAuditBlockSince(tx Tx, since time.Time) (string, error) {
	start := ""
	err := tx.Scan(tableAuditTime, timeKey(since), func(k string, _ []byte) (bool, error) {
		if len(k) != timeKeyLen+16 {
			return false, fmt.Errorf("bad audit time index key %q", k)
		}
		start = k[timeKeyLen:]
		return false, nil
	})
	return start, err
}

// scanAudit calls fn with every entry of the blocks from block key from
// on, in order, until fn returns false.
func scanAudit(ctx context.Context, tx Tx, from string, fn func(AuditEntry) bool) error {
	return tx.Scan(tableAudit, from, func(k string, v []byte) (bool, error) {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		var block []AuditEntry
		if err := json.Unmarshal(v, &block); err != nil {
			return false, fmt.Errorf("decode audit block %s: %w", k, err)
		}
		for _, e := range block {
			if !fn(e) {
				return false, nil
			}
		}
		return true, nil
	})
}

// auditBlockAtOrBefore returns the key of a block starting at or before
// seq, and after floor (itself a block) when one does: the block holding
// seq or one shortly before it. It probes backwards in growing steps, so
// it reads a few keys however long the trail is.
func auditBlockAtOrBefore(tx Tx, seq, floor uint64) (uint64, error) {
	for step := uint64(0); ; step = max(1, step*2) {
		if step >= seq-floor {
			return floor, nil
		}
		probe := seq - step
		var found uint64
		err := tx.Scan(tableAudit, seqKey(probe), func(k string, _ []byte) (bool, error) {
			var err error
			found, err = parseSeq(k)
			return false, err
		})
		if err != nil {
			return 0, err
		}
		if found != 0 && found <= seq {
			return found, nil
		}
	}
}

// AuditRetention bounds the trail: entries older than MaxAge and the
// oldest entries past MaxEntries are removed. Zero means no bound.
type AuditRetention struct {
	MaxAge     time.Duration
	MaxEntries uint64
}

// pruneChunk is the most blocks one pruning transaction removes.
const pruneChunk = 256

// PruneAudit removes, oldest first, the entries the retention no longer
// keeps, and returns how many. Removal stops at the first entry kept: an
// old entry after a newer one (a clock stepped back) stays until the
// newer one goes. It works in transactions of at most a few hundred
// blocks.
func (d *DB) PruneAudit(ctx context.Context, r AuditRetention) (int, error) {
	if r.MaxAge < 0 {
		return 0, errors.New("store: negative audit retention")
	}
	if r.MaxAge == 0 && r.MaxEntries == 0 {
		return 0, nil
	}
	cutoff := d.now().Add(-r.MaxAge)
	total := 0
	for {
		n := 0
		_, err := d.update(ctx, nil, func(tx Tx) error {
			var err error
			n, err = pruneAuditChunk(tx, r, cutoff)
			return err
		})
		if err != nil {
			return total, err
		}
		total += n
		if n == 0 {
			return total, nil
		}
	}
}

func pruneAuditChunk(tx Tx, r AuditRetention, cutoff time.Time) (int, error) {
	m, err := readAuditMeta(tx)
	if err != nil {
		return 0, err
	}
	drop := func(e AuditEntry) bool {
		kept := m.Next - e.Seq // entries from e on
		return (r.MaxEntries > 0 && kept > r.MaxEntries) || (r.MaxAge > 0 && e.Time.Before(cutoff))
	}
	removed := 0
	var (
		dels    []string
		rest    []AuditEntry
		nextKey string
		full    bool
	)
	err = tx.Scan(tableAudit, "", func(k string, v []byte) (bool, error) {
		if full {
			nextKey = k
			return false, nil
		}
		var block []AuditEntry
		if err := json.Unmarshal(v, &block); err != nil {
			return false, fmt.Errorf("decode audit block %s: %w", k, err)
		}
		i := 0
		for i < len(block) && drop(block[i]) {
			i++
		}
		if i == 0 {
			nextKey = k
			return false, nil
		}
		dels = append(dels, k)
		removed += i
		if i < len(block) {
			rest = block[i:]
			return false, nil
		}
		full = len(dels) == pruneChunk
		return true, nil
	})
	if err != nil || removed == 0 {
		return 0, err
	}
	for _, k := range dels {
		if err := tx.Delete(tableAudit, k); err != nil {
			return 0, err
		}
	}
	first := m.Next
	switch {
	case rest != nil:
		first = rest[0].Seq
		b, err := json.Marshal(rest)
		if err != nil {
			return 0, err
		}
		if err := tx.Put(tableAudit, seqKey(first), b); err != nil {
			return 0, err
		}
	case nextKey != "":
		if first, err = parseSeq(nextKey); err != nil {
			return 0, err
		}
	}
	// Index keys of removed blocks go; the latest of them, if any, moves
	// to the new first block (every earlier block is gone, so it is the
	// first block whose running maximum reaches that time).
	var idxDel []string
	lastTime := ""
	err = tx.Scan(tableAuditTime, "", func(k string, _ []byte) (bool, error) {
		if len(k) != timeKeyLen+16 {
			return false, fmt.Errorf("bad audit time index key %q", k)
		}
		s, err := parseSeq(k[timeKeyLen:])
		if err != nil || s >= first {
			return false, err
		}
		idxDel = append(idxDel, k)
		lastTime = k[:timeKeyLen]
		return true, nil
	})
	if err != nil {
		return 0, err
	}
	for _, k := range idxDel {
		if err := tx.Delete(tableAuditTime, k); err != nil {
			return 0, err
		}
	}
	if lastTime != "" && first < m.Next {
		if err := tx.Put(tableAuditTime, lastTime+seqKey(first), nil); err != nil {
			return 0, err
		}
	}
	m.First = first
	return removed, writeAuditMeta(tx, m)
}
