package boltstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// The layout of files written before the store seam: one bucket per
// record kind, a version counter per type in "versions", the audit trail
// keyed by 8-byte sequence numbers with a time index.
var (
	legacyVersions  = []byte("versions")
	legacySigning   = []byte("signing_keys")
	legacyAudit     = []byte("audit")
	legacyAuditTime = []byte("audit_time")
	legacyResources = map[string][]byte{
		mandatev1.PolicyTypeURL:          []byte("policies"),
		mandatev1.RevocationTypeURL:      []byte("revocations"),
		mandatev1.ApprovalTypeURL:        []byte("approvals"),
		mandatev1.VerificationKeyTypeURL: []byte("verification_keys"),
	}
)

// migrate converts a legacy file in the transaction tx: the global
// revision starts at the highest legacy version, so every type's version
// only grows, and the import raises them all once more.
func migrate(btx *bolt.Tx) error {
	var snap store.Snapshot
	snap.Resources = map[string][]store.Item{}
	var top uint64
	vb := btx.Bucket(legacyVersions)
	for typeURL, name := range legacyResources {
		top = max(top, getU64(vb.Get([]byte(typeURL))))
		b := btx.Bucket(name)
		if b == nil {
			continue
		}
		items := []store.Item{}
		if err := b.ForEach(func(k, v []byte) error {
			items = append(items, store.Item{Name: string(k), Value: append([]byte{}, v...)})
			return nil
		}); err != nil {
			return err
		}
		snap.Resources[typeURL] = items
	}
	if b := btx.Bucket(legacySigning); b != nil {
		if err := b.ForEach(func(k, v []byte) error {
			var sk store.SigningKey
			if err := json.Unmarshal(v, &sk); err != nil {
				return fmt.Errorf("legacy signing key %q: %w", k, err)
			}
			snap.SigningKeys = append(snap.SigningKeys, sk)
			return nil
		}); err != nil {
			return err
		}
	}
	if b := btx.Bucket(legacyAudit); b != nil {
		if err := b.ForEach(func(k, v []byte) error {
			var e store.AuditEntry
			if len(k) != 8 {
				return fmt.Errorf("legacy audit entry %x: bad key", k)
			}
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("legacy audit entry %x: %w", k, err)
			}
			e.Seq = binary.BigEndian.Uint64(k)
			snap.Audit = append(snap.Audit, e)
			return nil
		}); err != nil {
			return err
		}
	}
	revs, err := btx.CreateBucket(bucketRevs)
	if err != nil {
		return err
	}
	if err := revs.Put(keyGlobal, u64(top)); err != nil {
		return err
	}
	d, err := store.New(txBackend{btx})
	if err != nil {
		return err
	}
	if err := d.Import(context.Background(), snap); err != nil {
		return fmt.Errorf("convert legacy layout: %w", err)
	}
	for _, name := range append([][]byte{legacyVersions, legacySigning, legacyAudit, legacyAuditTime},
		legacyResources[mandatev1.PolicyTypeURL], legacyResources[mandatev1.RevocationTypeURL],
		legacyResources[mandatev1.ApprovalTypeURL], legacyResources[mandatev1.VerificationKeyTypeURL]) {
		if btx.Bucket(name) != nil {
			if err := btx.DeleteBucket(name); err != nil {
				return err
			}
		}
	}
	return nil
}

// txBackend runs every Update in one enclosing bbolt transaction.
type txBackend struct{ btx *bolt.Tx }

func (b txBackend) Update(_ context.Context, fn func(store.Tx) error) (uint64, error) {
	v := b.view()
	w := newRecord()
	if err := fn(&tx{view: v, w: w}); err != nil || len(w.ops) == 0 {
		return v.base, err
	}
	w.rev = v.base + 1
	return w.rev, applyRecords(b.btx, []*record{w})
}

func (b txBackend) View(_ context.Context, fn func(store.Tx) error) error {
	return fn(&tx{view: b.view()})
}

// view is the enclosing transaction as it stands (never closed here).
func (b txBackend) view() view {
	return view{btx: b.btx, base: getU64(b.btx.Bucket(bucketRevs).Get(keyGlobal))}
}

func (b txBackend) Close() error { return nil }
