// Package store is mandate-cp's durable state: policies, revocations,
// approvals, verification keys, signing keys, an append-only audit trail
// and a version counter per resource type, in one bbolt file
// (<data-dir>/mandate.db).
//
// Every write is one bbolt transaction, synced to disk before the call
// returns (bbolt's default): a write that returned nil survives a crash.
// Writes to a resource type raise that type's version counter in the same
// transaction, and may carry audit entries that commit with them.
package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// FileName is the database file inside the data directory.
const FileName = "mandate.db"

// ErrNotFound is returned when a named object does not exist.
var ErrNotFound = errors.New("store: not found")

var (
	bucketPolicies    = []byte("policies")
	bucketRevocations = []byte("revocations")
	bucketApprovals   = []byte("approvals")
	bucketKeys        = []byte("verification_keys")
	bucketSigning     = []byte("signing_keys")
	bucketAudit       = []byte("audit")
	bucketAuditTime   = []byte("audit_time")
	bucketVersions    = []byte("versions")
)

var resourceBuckets = map[string][]byte{
	mandatev1.PolicyTypeURL:          bucketPolicies,
	mandatev1.RevocationTypeURL:      bucketRevocations,
	mandatev1.ApprovalTypeURL:        bucketApprovals,
	mandatev1.VerificationKeyTypeURL: bucketKeys,
}

// Store is an open database. It is safe for concurrent use.
type Store struct {
	db  *bolt.DB
	now func() time.Time
}

// Option configures Open.
type Option func(*Store)

// WithClock sets the clock that stamps audit entries without a time.
func WithClock(now func() time.Time) Option { return func(s *Store) { s.now = now } }

// Open opens (creating if needed) <dataDir>/mandate.db. It fails after a
// second if another process holds the file.
func Open(ctx context.Context, dataDir string, opts ...Option) (*Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: open: %w", err)
	}
	if dataDir == "" {
		return nil, errors.New("store: empty data directory")
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("store: create data directory: %w", err)
	}
	db, err := bolt.Open(filepath.Join(dataDir, FileName), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", filepath.Join(dataDir, FileName), err)
	}
	s := &Store{db: db, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketPolicies, bucketRevocations, bucketApprovals, bucketKeys, bucketSigning, bucketAudit, bucketVersions} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if tx.Bucket(bucketAuditTime) == nil {
			// A store written before the time index existed: build it once.
			return buildAuditTimeIndex(tx)
		}
		return nil
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("store: create buckets: %w", err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// Version returns the persisted version counter of a resource type
// (0 before the first write).
func (s *Store) Version(ctx context.Context, typeURL string) (uint64, error) {
	if _, ok := resourceBuckets[typeURL]; !ok {
		return 0, fmt.Errorf("store: unknown type %q", typeURL)
	}
	var v uint64
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v = readVersion(tx, typeURL)
		return nil
	})
	return v, err
}

func readVersion(tx *bolt.Tx, typeURL string) uint64 {
	b := tx.Bucket(bucketVersions).Get([]byte(typeURL))
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func bumpVersion(tx *bolt.Tx, typeURL string) (uint64, error) {
	v := readVersion(tx, typeURL) + 1
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], v)
	return v, tx.Bucket(bucketVersions).Put([]byte(typeURL), buf[:])
}

func (s *Store) view(ctx context.Context, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := s.db.View(fn); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

func (s *Store) update(ctx context.Context, audit []AuditEntry, fn func(*bolt.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		for _, e := range audit {
			if err := s.appendAudit(tx, e); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	return nil
}

type named interface {
	proto.Message
	GetName() string
}

func put[M named](ctx context.Context, s *Store, typeURL string, m M, audit []AuditEntry) (uint64, error) {
	if any(m) == nil || m.GetName() == "" {
		return 0, fmt.Errorf("store: %s without a name", typeName(typeURL))
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return 0, fmt.Errorf("store: encode %s %q: %w", typeName(typeURL), m.GetName(), err)
	}
	var v uint64
	err = s.update(ctx, audit, func(tx *bolt.Tx) error {
		if err := tx.Bucket(resourceBuckets[typeURL]).Put([]byte(m.GetName()), data); err != nil {
			return err
		}
		v, err = bumpVersion(tx, typeURL)
		return err
	})
	return v, err
}

func putMany[M named](ctx context.Context, s *Store, typeURL string, ms []M, audit []AuditEntry) (uint64, error) {
	if len(ms) == 0 {
		return 0, fmt.Errorf("store: empty batch of %s", typeName(typeURL))
	}
	keys := make([][]byte, len(ms))
	vals := make([][]byte, len(ms))
	seen := make(map[string]struct{}, len(ms))
	for i, m := range ms {
		if any(m) == nil || m.GetName() == "" {
			return 0, fmt.Errorf("store: %s without a name", typeName(typeURL))
		}
		if _, dup := seen[m.GetName()]; dup {
			return 0, fmt.Errorf("store: duplicate %s %q in batch", typeName(typeURL), m.GetName())
		}
		seen[m.GetName()] = struct{}{}
		data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			return 0, fmt.Errorf("store: encode %s %q: %w", typeName(typeURL), m.GetName(), err)
		}
		keys[i], vals[i] = []byte(m.GetName()), data
	}
	var v uint64
	err := s.update(ctx, audit, func(tx *bolt.Tx) error {
		b := tx.Bucket(resourceBuckets[typeURL])
		for i := range keys {
			if err := b.Put(keys[i], vals[i]); err != nil {
				return err
			}
		}
		var err error
		v, err = bumpVersion(tx, typeURL)
		return err
	})
	return v, err
}

func delMany(ctx context.Context, s *Store, typeURL string, names []string, audit []AuditEntry) (uint64, error) {
	if len(names) == 0 {
		return 0, fmt.Errorf("store: empty batch of %s", typeName(typeURL))
	}
	var v uint64
	err := s.update(ctx, audit, func(tx *bolt.Tx) error {
		b := tx.Bucket(resourceBuckets[typeURL])
		for _, name := range names {
			if b.Get([]byte(name)) == nil {
				return fmt.Errorf("%s %q: %w", typeName(typeURL), name, ErrNotFound)
			}
			if err := b.Delete([]byte(name)); err != nil {
				return err
			}
		}
		var err error
		v, err = bumpVersion(tx, typeURL)
		return err
	})
	return v, err
}

func del(ctx context.Context, s *Store, typeURL, name string, audit []AuditEntry) (uint64, error) {
	var v uint64
	err := s.update(ctx, audit, func(tx *bolt.Tx) error {
		b := tx.Bucket(resourceBuckets[typeURL])
		if b.Get([]byte(name)) == nil {
			return fmt.Errorf("%s %q: %w", typeName(typeURL), name, ErrNotFound)
		}
		if err := b.Delete([]byte(name)); err != nil {
			return err
		}
		var err error
		v, err = bumpVersion(tx, typeURL)
		return err
	})
	return v, err
}

func replace[M named](ctx context.Context, s *Store, typeURL string, ms []M, audit []AuditEntry) (uint64, error) {
	data := make(map[string][]byte, len(ms))
	for _, m := range ms {
		if any(m) == nil || m.GetName() == "" {
			return 0, fmt.Errorf("store: %s without a name", typeName(typeURL))
		}
		if _, dup := data[m.GetName()]; dup {
			return 0, fmt.Errorf("store: duplicate %s %q", typeName(typeURL), m.GetName())
		}
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			return 0, fmt.Errorf("store: encode %s %q: %w", typeName(typeURL), m.GetName(), err)
		}
		data[m.GetName()] = b
	}
	var v uint64
	err := s.update(ctx, audit, func(tx *bolt.Tx) error {
		name := resourceBuckets[typeURL]
		if err := tx.DeleteBucket(name); err != nil {
			return err
		}
		b, err := tx.CreateBucket(name)
		if err != nil {
			return err
		}
		for k, val := range data {
			if err := b.Put([]byte(k), val); err != nil {
				return err
			}
		}
		v, err = bumpVersion(tx, typeURL)
		return err
	})
	return v, err
}

func list[M named](ctx context.Context, s *Store, typeURL string, fresh func() M) (map[string]M, uint64, error) {
	out := map[string]M{}
	var v uint64
	err := s.view(ctx, func(tx *bolt.Tx) error {
		v = readVersion(tx, typeURL)
		return tx.Bucket(resourceBuckets[typeURL]).ForEach(func(k, val []byte) error {
			m := fresh()
			if err := proto.Unmarshal(val, m); err != nil {
				return fmt.Errorf("decode %s %q: %w", typeName(typeURL), k, err)
			}
			out[string(k)] = m
			return nil
		})
	})
	if err != nil {
		return nil, 0, err
	}
	return out, v, nil
}

func typeName(typeURL string) string {
	for i := len(typeURL) - 1; i >= 0; i-- {
		if typeURL[i] == '.' {
			return typeURL[i+1:]
		}
	}
	return typeURL
}

// PutPolicy creates or replaces a policy and returns the new policy version.
func (s *Store) PutPolicy(ctx context.Context, p *mandatev1.Policy, audit ...AuditEntry) (uint64, error) {
	return put(ctx, s, mandatev1.PolicyTypeURL, p, audit)
}

// ReplacePolicies makes ps the whole policy set, in one transaction.
func (s *Store) ReplacePolicies(ctx context.Context, ps []*mandatev1.Policy, audit ...AuditEntry) (uint64, error) {
	return replace(ctx, s, mandatev1.PolicyTypeURL, ps, audit)
}

// DeletePolicy removes a policy; ErrNotFound when there is none.
func (s *Store) DeletePolicy(ctx context.Context, name string, audit ...AuditEntry) (uint64, error) {
	return del(ctx, s, mandatev1.PolicyTypeURL, name, audit)
}

// Policies returns every policy by name and the policy version.
func (s *Store) Policies(ctx context.Context) (map[string]*mandatev1.Policy, uint64, error) {
	return list(ctx, s, mandatev1.PolicyTypeURL, func() *mandatev1.Policy { return &mandatev1.Policy{} })
}

// PutRevocation creates or replaces a revocation record.
func (s *Store) PutRevocation(ctx context.Context, r *mandatev1.Revocation, audit ...AuditEntry) (uint64, error) {
	return put(ctx, s, mandatev1.RevocationTypeURL, r, audit)
}

// PutRevocations creates or replaces many revocation records in one
// transaction that raises the revocation version once, with the audit
// entries: either all of them are stored or none.
func (s *Store) PutRevocations(ctx context.Context, rs []*mandatev1.Revocation, audit ...AuditEntry) (uint64, error) {
	return putMany(ctx, s, mandatev1.RevocationTypeURL, rs, audit)
}

// DeleteRevocations removes many records (garbage collection of expired
// ones) in one transaction that raises the revocation version once.
// ErrNotFound, and nothing removed, when one of them does not exist.
func (s *Store) DeleteRevocations(ctx context.Context, names []string, audit ...AuditEntry) (uint64, error) {
	return delMany(ctx, s, mandatev1.RevocationTypeURL, names, audit)
}

// DeleteRevocation removes a record (for garbage-collecting expired ones;
// a revocation is lifted by expiry, not deletion).
func (s *Store) DeleteRevocation(ctx context.Context, name string, audit ...AuditEntry) (uint64, error) {
	return del(ctx, s, mandatev1.RevocationTypeURL, name, audit)
}

// Revocations returns every revocation record by name and the version.
func (s *Store) Revocations(ctx context.Context) (map[string]*mandatev1.Revocation, uint64, error) {
	return list(ctx, s, mandatev1.RevocationTypeURL, func() *mandatev1.Revocation { return &mandatev1.Revocation{} })
}

// PutApproval creates or replaces an approval.
func (s *Store) PutApproval(ctx context.Context, a *mandatev1.Approval, audit ...AuditEntry) (uint64, error) {
	return put(ctx, s, mandatev1.ApprovalTypeURL, a, audit)
}

// DeleteApproval removes an approval.
func (s *Store) DeleteApproval(ctx context.Context, name string, audit ...AuditEntry) (uint64, error) {
	return del(ctx, s, mandatev1.ApprovalTypeURL, name, audit)
}

// Approvals returns every approval by name and the version.
func (s *Store) Approvals(ctx context.Context) (map[string]*mandatev1.Approval, uint64, error) {
	return list(ctx, s, mandatev1.ApprovalTypeURL, func() *mandatev1.Approval { return &mandatev1.Approval{} })
}

// PutKey creates or replaces a verification (public) key.
func (s *Store) PutKey(ctx context.Context, k *mandatev1.VerificationKey, audit ...AuditEntry) (uint64, error) {
	return put(ctx, s, mandatev1.VerificationKeyTypeURL, k, audit)
}

// DeleteKey removes a verification key.
func (s *Store) DeleteKey(ctx context.Context, name string, audit ...AuditEntry) (uint64, error) {
	return del(ctx, s, mandatev1.VerificationKeyTypeURL, name, audit)
}

// Keys returns every verification key by name and the version.
func (s *Store) Keys(ctx context.Context) (map[string]*mandatev1.VerificationKey, uint64, error) {
	return list(ctx, s, mandatev1.VerificationKeyTypeURL, func() *mandatev1.VerificationKey { return &mandatev1.VerificationKey{} })
}

// SigningKey is a private key mandate-cp signs mandates with. It never
// leaves the control plane; its public half is published as a
// VerificationKey.
type SigningKey struct {
	ID        string    `json:"id"`
	Algorithm string    `json:"algorithm"`
	Private   []byte    `json:"private"` // ed25519.PrivateKey (64 bytes) for EdDSA
	CreatedAt time.Time `json:"created_at"`
	NotAfter  time.Time `json:"not_after,omitzero"`
}

// PutSigningKey creates or replaces a signing key.
func (s *Store) PutSigningKey(ctx context.Context, k SigningKey, audit ...AuditEntry) error {
	if k.ID == "" {
		return errors.New("store: signing key without an id")
	}
	data, err := json.Marshal(k)
	if err != nil {
		return fmt.Errorf("store: encode signing key %q: %w", k.ID, err)
	}
	return s.update(ctx, audit, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSigning).Put([]byte(k.ID), data)
	})
}

// SigningKey returns one signing key; ErrNotFound when there is none.
func (s *Store) SigningKey(ctx context.Context, id string) (SigningKey, error) {
	var k SigningKey
	err := s.view(ctx, func(tx *bolt.Tx) error {
		data := tx.Bucket(bucketSigning).Get([]byte(id))
		if data == nil {
			return fmt.Errorf("signing key %q: %w", id, ErrNotFound)
		}
		return json.Unmarshal(data, &k)
	})
	return k, err
}

// SigningKeys returns every signing key, ordered by id.
func (s *Store) SigningKeys(ctx context.Context) ([]SigningKey, error) {
	var out []SigningKey
	err := s.view(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSigning).ForEach(func(k, v []byte) error {
			var sk SigningKey
			if err := json.Unmarshal(v, &sk); err != nil {
				return fmt.Errorf("decode signing key %q: %w", k, err)
			}
			out = append(out, sk)
			return nil
		})
	})
	return out, err
}

// DeleteSigningKey removes a signing key; ErrNotFound when there is none.
func (s *Store) DeleteSigningKey(ctx context.Context, id string, audit ...AuditEntry) error {
	return s.update(ctx, audit, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketSigning)
		if b.Get([]byte(id)) == nil {
			return fmt.Errorf("signing key %q: %w", id, ErrNotFound)
		}
		return b.Delete([]byte(id))
	})
}

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

// Audit appends an entry to the audit trail.
func (s *Store) Audit(ctx context.Context, e AuditEntry) error {
	return s.update(ctx, nil, func(tx *bolt.Tx) error { return s.appendAudit(tx, e) })
}

func (s *Store) appendAudit(tx *bolt.Tx, e AuditEntry) error {
	if e.Action == "" {
		return errors.New("audit entry without an action")
	}
	b := tx.Bucket(bucketAudit)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	e.Seq = seq
	if e.Time.IsZero() {
		e.Time = s.now()
	}
	e.Time = e.Time.UTC()
	data, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := b.Put(seqKey(seq), data); err != nil {
		return err
	}
	return indexAuditTime(tx.Bucket(bucketAuditTime), seq, e.Time)
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

// The audit time index (bucket audit_time) lets AuditLog seek instead of
// decoding the whole trail. Entry times come from callers' clocks, which
// may step back, so the index is over the running maximum of the times:
// it holds one key (time, seq) for every entry whose time is later than
// every earlier entry's. Keys sort by time, then seq, and both rise
// together, so the first key at or after since names the first entry
// whose running maximum reaches since; every entry before it is older
// than since. Entries from there on are checked one by one (a clock that
// stepped back can leave older ones among them).

const auditTimeKeyLen = 20 // 8 bytes seconds (sign flipped), 4 nanos, 8 seq

func auditTimeKey(t time.Time, seq uint64) []byte {
	k := make([]byte, auditTimeKeyLen)
	binary.BigEndian.PutUint64(k[0:8], uint64(t.Unix())^(1<<63))
	binary.BigEndian.PutUint32(k[8:12], uint32(t.Nanosecond()))
	binary.BigEndian.PutUint64(k[12:20], seq)
	return k
}

// indexAuditTime adds (t, seq) to the index when t is a new maximum.
func indexAuditTime(idx *bolt.Bucket, seq uint64, t time.Time) error {
	k := auditTimeKey(t, seq)
	if last, _ := idx.Cursor().Last(); last != nil && bytes.Compare(k[:12], last[:12]) <= 0 {
		return nil
	}
	return idx.Put(k, nil)
}

func buildAuditTimeIndex(tx *bolt.Tx) error {
	idx, err := tx.CreateBucket(bucketAuditTime)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketAudit).ForEach(func(k, v []byte) error {
		var e AuditEntry
		if len(k) != 8 {
			return fmt.Errorf("index audit entry %x: bad key", k)
		}
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("index audit entry %x: %w", k, err)
		}
		return indexAuditTime(idx, binary.BigEndian.Uint64(k), e.Time)
	})
}

// AuditLog returns entries whose time is not before since, oldest (lowest
// sequence number) first, at most limit of them (limit <= 0 means 1000).
// It seeks through the time index: its cost is in the entries returned,
// plus those a backward clock step left among them, not in the size of
// the trail.
func (s *Store) AuditLog(ctx context.Context, since time.Time, limit int) ([]AuditEntry, error) {
	if limit <= 0 {
		limit = 1000
	}
	var out []AuditEntry
	err := s.view(ctx, func(tx *bolt.Tx) error {
		ik, _ := tx.Bucket(bucketAuditTime).Cursor().Seek(auditTimeKey(since, 0))
		if ik == nil {
			return nil // no entry reaches since
		}
		if len(ik) != auditTimeKeyLen {
			return fmt.Errorf("bad audit time index key %x", ik)
		}
		c := tx.Bucket(bucketAudit).Cursor()
		for k, v := c.Seek(ik[12:20]); k != nil && len(out) < limit; k, v = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			var e AuditEntry
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("decode audit entry %x: %w", k, err)
			}
			if !e.Time.Before(since) {
				out = append(out, e)
			}
		}
		return nil
	})
	return out, err
}
