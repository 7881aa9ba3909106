package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// ---- task owners ----

// TaskOwner says which orchestrator owns a task id: the one that first
// issued a mandate for it.
type TaskOwner struct {
	Task      string    `json:"task"`
	Owner     string    `json:"owner"`
	CreatedAt time.Time `json:"created_at"`
	// Expires: after it the task is forgotten and may be claimed anew;
	// zero never expires.
	Expires time.Time `json:"expires,omitzero"`
}

const tableTasks = "tasks"

func (o TaskOwner) live(now time.Time) bool { return o.Expires.IsZero() || now.Before(o.Expires) }

// ClaimTask makes claim.Owner the owner of claim.Task unless another
// owner holds it, and returns the owner now on record. A claim by the
// owner on record extends its expiry when claim's is later. ErrConflict
// (with the record) when another owner holds the task; an expired
// ownership is replaced.
func (d *DB) ClaimTask(ctx context.Context, claim TaskOwner, audit ...AuditEntry) (TaskOwner, error) {
	if claim.Task == "" || claim.Owner == "" || len(claim.Task) > MaxNameLen || len(claim.Owner) > MaxNameLen {
		return TaskOwner{}, errors.New("store: task claim needs a task and an owner")
	}
	now := d.now()
	if claim.CreatedAt.IsZero() {
		claim.CreatedAt = now
	}
	claim.CreatedAt, claim.Expires = claim.CreatedAt.UTC(), claim.Expires.UTC()
	var rec TaskOwner
	conflict := false
	_, err := d.update(ctx, nil, func(tx Tx) error {
		conflict = false
		var cur TaskOwner
		ok, err := getJSON(tx, tableTasks, claim.Task, &cur)
		if err != nil {
			return err
		}
		switch {
		case ok && cur.live(now) && cur.Owner != claim.Owner:
			rec, conflict = cur, true
			return nil
		case ok && cur.live(now):
			rec = cur
			if cur.Expires.IsZero() || claim.Expires.IsZero() || !claim.Expires.After(cur.Expires) {
				return nil
			}
			rec.Expires = claim.Expires
		default:
			rec = claim
		}
		if err := putJSON(tx, tableTasks, claim.Task, rec); err != nil {
			return err
		}
		return d.appendAudit(tx, audit)
	})
	if err != nil {
		return TaskOwner{}, err
	}
	if conflict {
		return rec, fmt.Errorf("store: task %q is owned by %s: %w", claim.Task, rec.Owner, ErrConflict)
	}
	return rec, nil
}

// TaskOwnerOf returns the live owner record of a task; ErrNotFound when
// there is none (or it expired).
func (d *DB) TaskOwnerOf(ctx context.Context, task string) (TaskOwner, error) {
	var rec TaskOwner
	ok := false
	err := d.view(ctx, func(tx Tx) error {
		var err error
		ok, err = getJSON(tx, tableTasks, task, &rec)
		return err
	})
	if err != nil {
		return TaskOwner{}, err
	}
	if !ok || !rec.live(d.now()) {
		return TaskOwner{}, fmt.Errorf("store: task %q: %w", task, ErrNotFound)
	}
	return rec, nil
}

// ---- pending step-up approvals ----

// PendingApproval is a step-up approval request waiting for an operator.
// Data is the requester's record (opaque to the store).
type PendingApproval struct {
	ID        string    `json:"id"`
	Subject   string    `json:"subject"`
	Data      []byte    `json:"data,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
	Expires   time.Time `json:"expires"`
}

const (
	tablePending    = "pending"
	tablePendingSub = "pending_by_subject" // subject \x00 id -> expiry (unix nanos)
)

func pendingSubKey(subject, id string) string { return subject + "\x00" + id }

// PutPending creates or updates a pending request. A new request is
// refused with ErrQuota when its subject already has quota live requests
// (quota <= 0: no limit); an update of a request held keeps its subject
// (ErrConflict when it differs).
func (d *DB) PutPending(ctx context.Context, p PendingApproval, quota int, audit ...AuditEntry) error {
	if p.ID == "" || p.Subject == "" || len(p.ID) > MaxNameLen || len(p.Subject) > MaxNameLen {
		return errors.New("store: pending approval needs an id and a subject")
	}
	if p.Expires.IsZero() {
		return errors.New("store: pending approval without an expiry")
	}
	now := d.now()
	if p.UpdatedAt.IsZero() {
		p.UpdatedAt = now
	}
	p.UpdatedAt, p.Expires = p.UpdatedAt.UTC(), p.Expires.UTC()
	_, err := d.update(ctx, audit, func(tx Tx) error {
		var cur PendingApproval
		ok, err := getJSON(tx, tablePending, p.ID, &cur)
		if err != nil {
			return err
		}
		if ok && cur.Subject != p.Subject {
			return fmt.Errorf("pending approval %q belongs to another subject: %w", p.ID, ErrConflict)
		}
		if !ok && quota > 0 {
			n := 0
			prefix := p.Subject + "\x00"
			err := tx.Scan(tablePendingSub, prefix, func(k string, v []byte) (bool, error) {
				if len(k) < len(prefix) || k[:len(prefix)] != prefix {
					return false, nil
				}
				exp, err := strconv.ParseInt(string(v), 10, 64)
				if err != nil {
					return false, fmt.Errorf("bad pending index value for %q", k)
				}
				if now.Before(time.Unix(0, exp)) {
					n++
				}
				return n < quota, nil
			})
			if err != nil {
				return err
			}
			if n >= quota {
				return fmt.Errorf("subject %s holds %d pending approvals: %w", p.Subject, n, ErrQuota)
			}
		}
		if err := putJSON(tx, tablePending, p.ID, p); err != nil {
			return err
		}
		return tx.Put(tablePendingSub, pendingSubKey(p.Subject, p.ID), []byte(strconv.FormatInt(p.Expires.UnixNano(), 10)))
	})
	return err
}

// Pending returns one pending request; ErrNotFound when there is none.
func (d *DB) Pending(ctx context.Context, id string) (PendingApproval, error) {
	var p PendingApproval
	ok := false
	err := d.view(ctx, func(tx Tx) error {
		var err error
		ok, err = getJSON(tx, tablePending, id, &p)
		return err
	})
	if err == nil && !ok {
		err = fmt.Errorf("store: pending approval %q: %w", id, ErrNotFound)
	}
	return p, err
}

// PendingList returns every pending request (expired ones too, until a
// sweep), ordered by id.
func (d *DB) PendingList(ctx context.Context) ([]PendingApproval, error) {
	var out []PendingApproval
	err := d.view(ctx, func(tx Tx) error {
		out = out[:0]
		return tx.Scan(tablePending, "", func(k string, v []byte) (bool, error) {
			var p PendingApproval
			if err := json.Unmarshal(v, &p); err != nil {
				return false, fmt.Errorf("decode pending approval %q: %w", k, err)
			}
			out = append(out, p)
			return true, nil
		})
	})
	return out, err
}

// DeletePending removes a pending request; ErrNotFound when there is none.
func (d *DB) DeletePending(ctx context.Context, id string, audit ...AuditEntry) error {
	_, err := d.update(ctx, audit, func(tx Tx) error {
		var cur PendingApproval
		ok, err := getJSON(tx, tablePending, id, &cur)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("pending approval %q: %w", id, ErrNotFound)
		}
		if err := tx.Delete(tablePending, id); err != nil {
			return err
		}
		return tx.Delete(tablePendingSub, pendingSubKey(cur.Subject, id))
	})
	return err
}

// ---- approval uses ----

type approvalUses struct {
	Used    uint32    `json:"used"`
	Expires time.Time `json:"expires"`
}

const tableUses = "approval_uses"

// ClaimApprovalUse counts one use of an approval that allows at most max
// uses until expires, and returns the uses counted so far, this one
// included. ErrExhausted when all max are used, ErrExpired after
// expires; nothing is counted then. The count is in the store, so every
// control-plane instance sees the same one.
func (d *DB) ClaimApprovalUse(ctx context.Context, name string, max uint32, expires time.Time) (uint32, error) {
	if name == "" || len(name) > MaxNameLen || max == 0 {
		return 0, errors.New("store: approval use claim needs a name and a positive maximum")
	}
	now := d.now()
	if !now.Before(expires) {
		return 0, fmt.Errorf("store: approval %q: %w", name, ErrExpired)
	}
	var u approvalUses
	_, err := d.update(ctx, nil, func(tx Tx) error {
		u = approvalUses{}
		if _, err := getJSON(tx, tableUses, name, &u); err != nil {
			return err
		}
		if u.Used >= max {
			return fmt.Errorf("approval %q: %d of %d uses: %w", name, u.Used, max, ErrExhausted)
		}
		u.Used++
		if expires.After(u.Expires) {
			u.Expires = expires.UTC()
		}
		return putJSON(tx, tableUses, name, u)
	})
	if err != nil {
		return 0, err
	}
	return u.Used, nil
}

// ---- sweeping ----

// SweepResult counts what SweepExpired removed.
type SweepResult struct {
	Tasks, Pending, Uses, DriftCounts int
}

// SweepExpired removes expired task owners, pending requests, approval
// use counts and drift counts, in transactions of at most a few hundred
// records.
func (d *DB) SweepExpired(ctx context.Context) (SweepResult, error) {
	now := d.now()
	var res SweepResult
	var err error
	if res.Tasks, err = d.sweep(ctx, tableTasks, func(v []byte) (bool, error) {
		var o TaskOwner
		err := json.Unmarshal(v, &o)
		return err == nil && !o.live(now), err
	}, nil); err != nil {
		return res, err
	}
	if res.Pending, err = d.sweep(ctx, tablePending, func(v []byte) (bool, error) {
		var p PendingApproval
		err := json.Unmarshal(v, &p)
		return err == nil && !now.Before(p.Expires), err
	}, func(tx Tx, v []byte) error {
		var p PendingApproval
		if err := json.Unmarshal(v, &p); err != nil {
			return err
		}
		return tx.Delete(tablePendingSub, pendingSubKey(p.Subject, p.ID))
	}); err != nil {
		return res, err
	}
	res.Uses, err = d.sweep(ctx, tableUses, func(v []byte) (bool, error) {
		var u approvalUses
		err := json.Unmarshal(v, &u)
		return err == nil && !now.Before(u.Expires), err
	}, nil)
	if err != nil {
		return res, err
	}
	res.DriftCounts, err = d.sweep(ctx, tableDriftCounts, driftCountExpired(now), nil)
	return res, err
}

func (d *DB) sweep(ctx context.Context, table string, expired func([]byte) (bool, error), also func(Tx, []byte) error) (int, error) {
	total := 0
	from := ""
	for {
		n, next := 0, ""
		_, err := d.update(ctx, nil, func(tx Tx) error {
			n, next = 0, ""
			type kv struct {
				k string
				v []byte
			}
			var dels []kv
			seen := 0
			err := tx.Scan(table, from, func(k string, v []byte) (bool, error) {
				if seen == 4*pruneChunk {
					next = k
					return false, nil
				}
				seen++
				gone, err := expired(v)
				if err != nil {
					return false, fmt.Errorf("decode %s %q: %w", table, k, err)
				}
				if gone {
					dels = append(dels, kv{k, v})
				}
				return len(dels) < pruneChunk, nil
			})
			if err != nil {
				return err
			}
			for _, x := range dels {
				if err := tx.Delete(table, x.k); err != nil {
					return err
				}
				if also != nil {
					if err := also(tx, x.v); err != nil {
						return err
					}
				}
			}
			if len(dels) == pruneChunk && next == "" {
				next = dels[len(dels)-1].k + "\x00"
			}
			n = len(dels)
			return nil
		})
		if err != nil {
			return total, err
		}
		total += n
		if next == "" {
			return total, nil
		}
		from = next
	}
}

func getJSON(tx Tx, table, key string, v any) (bool, error) {
	b, ok, err := tx.Get(table, key)
	if err != nil || !ok {
		return false, err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return false, fmt.Errorf("decode %s %q: %w", table, key, err)
	}
	return true, nil
}

func putJSON(tx Tx, table, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s %q: %w", table, key, err)
	}
	return tx.Put(table, key, b)
}
