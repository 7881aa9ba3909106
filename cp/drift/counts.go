package drift

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/mandate-dev/mandate/cp/store"
)

// storedTracker is a tracker as Counts keeps it.
type storedTracker struct {
	Times    []int64   `json:"t,omitempty"` // unix nanoseconds, the ring
	Next     int       `json:"n,omitempty"`
	Last     time.Time `json:"l"`
	LastWhy  string    `json:"w,omitempty"`
	ActedTil time.Time `json:"a,omitzero"`
}

// load replaces the trackers of keys with what Counts holds (a key it
// does not hold starts afresh: its count expired, or another leader never
// saw it). Called with d.observe held.
func (d *Detector) load(ctx context.Context, keys map[string]*rule) error {
	names := slices.Sorted(maps.Keys(keys))
	for len(names) > 0 {
		n := min(len(names), store.MaxDriftCountBatch)
		got, err := d.cfg.Counts.DriftCounts(ctx, names[:n])
		if err != nil {
			return fmt.Errorf("drift: read counts: %w", err)
		}
		d.mu.Lock()
		for _, k := range names[:n] {
			b, ok := got[k]
			if !ok {
				delete(d.keys, k)
				continue
			}
			var st storedTracker
			if err := json.Unmarshal(b, &st); err != nil || st.Next < 0 || (st.Next > 0 && st.Next >= len(st.Times)) ||
				len(st.Times) > keys[k].Threshold+1 {
				d.log.Warn("drift count unreadable; counting afresh", "key", k, "error", err)
				delete(d.keys, k)
				continue
			}
			tr := &tracker{next: st.Next, last: st.Last, lastWhy: st.LastWhy, actedTil: st.ActedTil,
				times: make([]time.Time, len(st.Times), keys[k].Threshold+1)}
			for i, ns := range st.Times {
				tr.times[i] = time.Unix(0, ns)
			}
			if len(d.keys) >= d.cfg.MaxKeys && d.keys[k] == nil {
				d.evictLocked(d.cfg.Now())
			}
			d.keys[k] = tr
		}
		d.mu.Unlock()
		names = names[n:]
	}
	return nil
}

// store writes the trackers of keys to Counts, each until its window (or
// the record it made) is over. Called with d.observe held.
func (d *Detector) store(ctx context.Context, keys map[string]*rule, now time.Time) error {
	var out []store.DriftCount
	d.mu.Lock()
	for k, r := range keys {
		tr := d.keys[k]
		if tr == nil {
			out = append(out, store.DriftCount{Key: k})
			continue
		}
		st := storedTracker{Next: tr.next, Last: tr.last, LastWhy: tr.lastWhy, ActedTil: tr.actedTil,
			Times: make([]int64, len(tr.times))}
		for i, t := range tr.times {
			st.Times[i] = t.UnixNano()
		}
		b, err := json.Marshal(st)
		if err != nil {
			d.mu.Unlock()
			return fmt.Errorf("drift: encode count: %w", err)
		}
		// Past the window after the last event, and after the record in
		// force, the count no longer matters.
		exp := tr.last.Add(r.window)
		if tr.actedTil.After(exp) {
			exp = tr.actedTil
		}
		if !exp.After(now) {
			exp = now.Add(r.window)
		}
		out = append(out, store.DriftCount{Key: k, Value: b, Expires: exp})
	}
	d.mu.Unlock()
	for len(out) > 0 {
		n := min(len(out), store.MaxDriftCountBatch)
		if err := d.cfg.Counts.PutDriftCounts(ctx, out[:n]); err != nil {
			return fmt.Errorf("drift: write counts: %w", err)
		}
		out = out[n:]
	}
	return nil
}
