package store

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// Snapshot is whole-store content to Import: resources by type URL,
// signing keys and the audit trail (entries keep their sequence numbers
// and times).
type Snapshot struct {
	Resources   map[string][]Item
	SigningKeys []SigningKey
	Audit       []AuditEntry
}

// Import writes s into a store that holds no resource, signing key or
// audit entry of its own yet, in one transaction: how a file of an
// earlier layout is converted (boltstore) and how one store is copied to
// another.
func (d *DB) Import(ctx context.Context, s Snapshot) error {
	audit := slices.Clone(s.Audit)
	slices.SortFunc(audit, func(a, b AuditEntry) int { return cmp.Compare(a.Seq, b.Seq) })
	for i, e := range audit {
		if e.Seq == 0 || (i > 0 && e.Seq == audit[i-1].Seq) {
			return fmt.Errorf("store: import: audit entry %d without a unique sequence number", i)
		}
	}
	sealedKeys := make([]storedKey, len(s.SigningKeys))
	for i, k := range s.SigningKeys {
		if k.ID == "" {
			return errors.New("store: import: signing key without an id")
		}
		var err error
		if sealedKeys[i], err = d.seal(k); err != nil {
			return wrap(err)
		}
	}
	_, err := d.update(ctx, nil, func(tx Tx) error {
		m, err := readAuditMeta(tx)
		if err != nil {
			return err
		}
		if m.Next != 1 && len(audit) > 0 {
			return errors.New("import: the audit trail is not empty")
		}
		for typeURL, items := range s.Resources {
			if err := checkItems(typeURL, items); err != nil {
				return err
			}
			for _, it := range items {
				if err := tx.Put(resTable(typeURL), it.Name, it.Value); err != nil {
					return err
				}
			}
			if len(items) == 0 {
				if err := tx.Delete(resTable(typeURL), "\x00"); err != nil {
					return err
				}
			}
		}
		for _, k := range sealedKeys {
			if err := putJSON(tx, tableSigning, k.ID, k); err != nil {
				return err
			}
		}
		if len(audit) == 0 {
			return nil
		}
		m = auditMeta{First: audit[0].Seq, Next: audit[len(audit)-1].Seq + 1}
		for _, e := range audit {
			e.Time = e.Time.UTC()
			b, err := json.Marshal([]AuditEntry{e})
			if err != nil {
				return err
			}
			if err := tx.Put(tableAudit, seqKey(e.Seq), b); err != nil {
				return err
			}
			if e.Time.After(m.Max) {
				if err := tx.Put(tableAuditTime, timeKey(e.Time)+seqKey(e.Seq), nil); err != nil {
					return err
				}
				m.Max = e.Time
			}
		}
		return writeAuditMeta(tx, m)
	})
	return err
}
