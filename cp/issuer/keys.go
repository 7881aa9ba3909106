package issuer

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/cp/store"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// KeyPlane is what the keyring needs of cp/plane.
type KeyPlane interface {
	SetVerificationKeys(ctx context.Context, keys []*mandatev1.VerificationKey, actor string) (string, error)
}

// KeyStore is what the keyring needs of the store (cp/store.DB): the
// signing keys, sealed at rest when the store has a key-encryption key.
type KeyStore interface {
	SigningKeys(ctx context.Context) ([]store.SigningKey, error)
	PutSigningKey(ctx context.Context, k store.SigningKey, audit ...store.AuditEntry) error
	DeleteSigningKey(ctx context.Context, id string, audit ...store.AuditEntry) error
}

// KeyringConfig configures a Keyring.
type KeyringConfig struct {
	Plane KeyPlane
	Store KeyStore
	// Issuer is stamped into every mandate ("iss") and is the actor of key
	// changes in the audit trail.
	Issuer string
	// Rotation is how long a key signs before the next one takes over.
	Rotation time.Duration
	// Overlap is how long a retired key keeps verifying; it must cover the
	// longest mandate lifetime so that no token outlives its key.
	Overlap time.Duration
	// Skew widens a key's published window at its start, for replicas
	// whose clocks run behind.
	Skew   time.Duration
	Now    func() time.Time
	Rand   io.Reader // default crypto/rand
	Logger *slog.Logger
}

type ringKey struct {
	sk     store.SigningKey
	pub    ed25519.PublicKey
	signer *mandate.Signer
}

// Keyring holds mandate-cp's signing keys: the newest signs, older ones
// are retired and stay published as VerificationKeys for the overlap, then
// are deleted. Private keys live only in the store's signing-key bucket
// (file mode 0600) and in memory; they are never logged or returned.
type Keyring struct {
	cfg KeyringConfig
	log *slog.Logger

	mu   sync.Mutex
	keys []*ringKey // by CreatedAt; the last one is active
	pub  []mandate.Key
	gen  uint64 // bumped on every change of the published set
}

// NewKeyring validates cfg. Call Load before using it.
func NewKeyring(cfg KeyringConfig) (*Keyring, error) {
	switch {
	case cfg.Plane == nil:
		return nil, errors.New("issuer: keyring: Plane is required")
	case cfg.Store == nil:
		return nil, errors.New("issuer: keyring: Store is required")
	case cfg.Issuer == "":
		return nil, errors.New("issuer: keyring: Issuer is required")
	case cfg.Rotation < time.Minute:
		return nil, fmt.Errorf("issuer: keyring: rotation %v under one minute", cfg.Rotation)
	case cfg.Overlap <= 0:
		return nil, fmt.Errorf("issuer: keyring: overlap %v must be positive", cfg.Overlap)
	case cfg.Skew < 0:
		return nil, fmt.Errorf("issuer: keyring: negative skew %v", cfg.Skew)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	return &Keyring{cfg: cfg, log: l}, nil
}

// Load reads the signing keys from the store, retires and prunes as the
// clock says, creates a key when none is active, and publishes the
// verification keys (always, so replicas match the store after a restart).
func (k *Keyring) Load(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.readLocked(ctx); err != nil {
		return err
	}
	if _, err := k.tickLocked(ctx, true); err != nil {
		return err
	}
	return nil
}

// readLocked makes the ring the store's signing keys: another instance
// of the fleet may have rotated, retired or deleted one since. A key
// superseded without being retired (a crash between creating a key and
// retiring its predecessor, or two instances rotating at once) is retired
// now. It reports whether the ring changed.
func (k *Keyring) readLocked(ctx context.Context) (bool, error) {
	sks, err := k.cfg.Store.SigningKeys(ctx)
	if err != nil {
		return false, fmt.Errorf("issuer: load signing keys: %w", err)
	}
	slices.SortFunc(sks, func(a, b store.SigningKey) int { return a.CreatedAt.Compare(b.CreatedAt) })
	keys := make([]*ringKey, 0, len(sks))
	for i, sk := range sks {
		if sk.Algorithm != string(mandateAlg) || len(sk.Private) != ed25519.PrivateKeySize {
			return false, fmt.Errorf("issuer: signing key %q: unsupported algorithm or key size", sk.ID)
		}
		if i < len(sks)-1 && sk.NotAfter.IsZero() {
			sk.NotAfter = sks[i+1].CreatedAt.Add(k.cfg.Overlap)
			if err := k.cfg.Store.PutSigningKey(ctx, sk, k.auditEntry("signing-key.retire", sk.ID, "superseded")); err != nil {
				return false, fmt.Errorf("issuer: retire signing key %q: %w", sk.ID, err)
			}
		}
		rk, err := newRingKey(sk, k.cfg.Issuer)
		if err != nil {
			return false, err
		}
		keys = append(keys, rk)
	}
	changed := len(keys) != len(k.keys)
	for i := 0; !changed && i < len(keys); i++ {
		changed = keys[i].sk.ID != k.keys[i].sk.ID || !keys[i].sk.NotAfter.Equal(k.keys[i].sk.NotAfter)
	}
	k.keys = keys
	return changed, nil
}

const mandateAlg = "EdDSA"

func newRingKey(sk store.SigningKey, issuer string) (*ringKey, error) {
	priv := ed25519.PrivateKey(sk.Private)
	pub := priv.Public().(ed25519.PublicKey)
	kid, err := mandate.KeyID(pub)
	if err != nil {
		return nil, fmt.Errorf("issuer: signing key: %w", err)
	}
	if kid != sk.ID {
		return nil, fmt.Errorf("issuer: signing key %q: id does not match the key", sk.ID)
	}
	s, err := mandate.NewSigner(kid, priv, issuer)
	if err != nil {
		return nil, fmt.Errorf("issuer: signing key %q: %w", sk.ID, err)
	}
	return &ringKey{sk: sk, pub: pub, signer: s}, nil
}

// Tick reads the keys from the store (another instance may have rotated
// them), then rotates the active key when its time is up and deletes
// retired keys whose overlap has ended, publishing the verification keys
// when the set changed. It reports whether it did.
func (k *Keyring) Tick(ctx context.Context) (bool, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	read, err := k.readLocked(ctx)
	if err != nil {
		return false, err
	}
	changed, err := k.tickLocked(ctx, read)
	return changed || read, err
}

func (k *Keyring) tickLocked(ctx context.Context, publish bool) (bool, error) {
	now := k.cfg.Now()
	st := k.cfg.Store
	changed := false
	kept := k.keys[:0]
	for _, rk := range k.keys {
		if !rk.sk.NotAfter.IsZero() && !now.Before(rk.sk.NotAfter) {
			if err := st.DeleteSigningKey(ctx, rk.sk.ID, k.auditEntry("signing-key.delete", rk.sk.ID, "overlap ended")); err != nil && !errors.Is(err, store.ErrNotFound) {
				return false, fmt.Errorf("issuer: delete signing key %q: %w", rk.sk.ID, err)
			}
			k.log.Info("mandate signing key deleted", "kid", rk.sk.ID)
			changed = true
			continue
		}
		kept = append(kept, rk)
	}
	k.keys = kept
	if a := k.activeLocked(); a == nil || !now.Before(a.sk.CreatedAt.Add(k.cfg.Rotation)) {
		if err := k.rotateLocked(ctx, now); err != nil {
			return false, err
		}
		changed = true
	}
	if changed || publish {
		if err := k.publishLocked(ctx); err != nil {
			return changed, err
		}
	}
	return changed, nil
}

// Rotate makes a fresh key active now, whatever the schedule says.
func (k *Keyring) Rotate(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, err := k.readLocked(ctx); err != nil {
		return err
	}
	if err := k.rotateLocked(ctx, k.cfg.Now()); err != nil {
		return err
	}
	return k.publishLocked(ctx)
}

func (k *Keyring) rotateLocked(ctx context.Context, now time.Time) error {
	kid, _, priv, err := mandate.GenerateKey(k.cfg.Rand)
	if err != nil {
		return fmt.Errorf("issuer: %w", err)
	}
	sk := store.SigningKey{ID: kid, Algorithm: mandateAlg, Private: priv, CreatedAt: now.UTC()}
	st := k.cfg.Store
	// The new key is stored before the old one is retired: a crash in
	// between leaves two unretired keys, which Load resolves.
	if err := st.PutSigningKey(ctx, sk, k.auditEntry("signing-key.create", kid, "rotation")); err != nil {
		return fmt.Errorf("issuer: store signing key: %w", err)
	}
	rk, err := newRingKey(sk, k.cfg.Issuer)
	if err != nil {
		return err
	}
	if old := k.activeLocked(); old != nil {
		retired := old.sk
		retired.NotAfter = now.Add(k.cfg.Overlap).UTC()
		if err := st.PutSigningKey(ctx, retired, k.auditEntry("signing-key.retire", retired.ID,
			"verifies until "+retired.NotAfter.Format(time.RFC3339))); err != nil {
			return fmt.Errorf("issuer: retire signing key: %w", err)
		}
		old.sk = retired
	}
	k.keys = append(k.keys, rk)
	k.log.Info("mandate signing key rotated", "kid", kid)
	return nil
}

func (k *Keyring) activeLocked() *ringKey {
	if len(k.keys) == 0 {
		return nil
	}
	return k.keys[len(k.keys)-1]
}

// window is the published validity of a key: from its creation (less the
// skew) until its retirement plus overlap, or, for the active key, until
// the scheduled rotation plus overlap, so that a control plane that stops
// rotating does not leave a key valid forever.
func (k *Keyring) window(rk *ringKey) (time.Time, time.Time) {
	from := rk.sk.CreatedAt.Add(-k.cfg.Skew)
	until := rk.sk.NotAfter
	if until.IsZero() {
		until = rk.sk.CreatedAt.Add(k.cfg.Rotation + k.cfg.Overlap)
	}
	return from, until
}

func (k *Keyring) publishLocked(ctx context.Context) error {
	vks := make([]*mandatev1.VerificationKey, 0, len(k.keys))
	pub := make([]mandate.Key, 0, len(k.keys))
	for _, rk := range k.keys {
		from, until := k.window(rk)
		vks = append(vks, &mandatev1.VerificationKey{
			Name: rk.sk.ID, Algorithm: mandateAlg, PublicKey: slices.Clone(rk.pub),
			NotBefore: timestamppb.New(from), NotAfter: timestamppb.New(until),
		})
		pub = append(pub, mandate.Key{ID: rk.sk.ID, Public: slices.Clone(rk.pub), NotBefore: from, NotAfter: until})
	}
	k.pub = pub
	k.gen++
	if _, err := k.cfg.Plane.SetVerificationKeys(ctx, vks, k.cfg.Issuer); err != nil {
		return fmt.Errorf("issuer: publish verification keys: %w", err)
	}
	return nil
}

// Signer returns the active key's signer and the time after which it must
// not sign any more (its scheduled rotation).
func (k *Keyring) Signer() (*mandate.Signer, time.Time, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	a := k.activeLocked()
	if a == nil {
		return nil, time.Time{}, errors.New("issuer: no signing key (keyring not loaded)")
	}
	return a.signer, a.sk.CreatedAt.Add(k.cfg.Rotation), nil
}

// PublicKeys returns the published verification keys and a generation
// number that changes whenever they do.
func (k *Keyring) PublicKeys() ([]mandate.Key, uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.pub), k.gen
}

// VerificationKeys returns the published keys as resources.
func (k *Keyring) VerificationKeys() []*mandatev1.VerificationKey {
	keys, _ := k.PublicKeys()
	out := make([]*mandatev1.VerificationKey, 0, len(keys))
	for _, key := range keys {
		out = append(out, &mandatev1.VerificationKey{
			Name: key.ID, Algorithm: mandateAlg, PublicKey: slices.Clone(key.Public),
			NotBefore: timestamppb.New(key.NotBefore), NotAfter: timestamppb.New(key.NotAfter),
		})
	}
	return out
}

// Run calls Tick every interval until ctx ends.
func (k *Keyring) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = 30 * time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := k.Tick(ctx); err != nil {
				k.log.Error("mandate key rotation failed", "err", err)
			}
		}
	}
}

func (k *Keyring) auditEntry(action, kid, detail string) store.AuditEntry {
	return store.AuditEntry{Time: k.cfg.Now(), Actor: k.cfg.Issuer, Action: action, Object: "signing-key/" + kid, Detail: detail}
}
