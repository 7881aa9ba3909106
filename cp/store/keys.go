package store

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"
)

// SigningKey is a private key mandate-cp signs mandates with. It never
// leaves the control plane; its public half is published as a
// VerificationKey.
type SigningKey struct {
	ID        string    `json:"id"`
	Algorithm string    `json:"algorithm"`
	Private   []byte    `json:"private,omitempty"` // ed25519.PrivateKey (64 bytes) for EdDSA
	CreatedAt time.Time `json:"created_at"`
	NotAfter  time.Time `json:"not_after,omitzero"`
}

// storedKey is a SigningKey as stored: Private in the clear only when no
// key-encryption key is configured, else Sealed.
type storedKey struct {
	SigningKey
	Sealed *sealed `json:"sealed,omitempty"`
}

type sealed struct {
	KEK   string `json:"kek"`
	Nonce []byte `json:"nonce"`
	Data  []byte `json:"data"`
}

const tableSigning = "signing_keys"

// KEK is a key-encryption key: AES-256-GCM over the signing keys' private
// halves, named so that a stored key says which KEK sealed it.
type KEK struct {
	ID  string
	Key []byte // 32 bytes
}

type kek struct {
	current KEK
	all     map[string]cipher.AEAD
}

var kekIDRe = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// WithKeyEncryption seals every signing key stored from now on with
// current, and opens keys sealed with current or any of old (a rotation
// in progress). Keys stored in the clear stay readable until
// RewrapSigningKeys seals them.
func WithKeyEncryption(current KEK, old ...KEK) Option {
	return func(d *DB) error {
		k := &kek{current: current, all: map[string]cipher.AEAD{}}
		for _, x := range append([]KEK{current}, old...) {
			if !kekIDRe.MatchString(x.ID) {
				return fmt.Errorf("store: bad key-encryption key id %q", x.ID)
			}
			if len(x.Key) != 32 {
				return fmt.Errorf("store: key-encryption key %q: %d bytes, want 32", x.ID, len(x.Key))
			}
			if _, dup := k.all[x.ID]; dup {
				return fmt.Errorf("store: key-encryption key %q given twice", x.ID)
			}
			b, err := aes.NewCipher(x.Key)
			if err != nil {
				return fmt.Errorf("store: key-encryption key %q: %w", x.ID, err)
			}
			if k.all[x.ID], err = cipher.NewGCM(b); err != nil {
				return fmt.Errorf("store: key-encryption key %q: %w", x.ID, err)
			}
		}
		d.kek = k
		return nil
	}
}

// ReadKEKFile reads key-encryption keys from a file: one key a line,
// "<id> <base64 of 32 bytes>", the first line the current key and the
// others older ones still accepted for reading; blank lines and lines
// starting with # are skipped. The file must not be readable by group or
// others.
func ReadKEKFile(path string) (current KEK, old []KEK, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return KEK{}, nil, fmt.Errorf("store: key-encryption key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return KEK{}, nil, fmt.Errorf("store: key-encryption key file %s is accessible by group or others (mode %v)", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return KEK{}, nil, fmt.Errorf("store: key-encryption key file: %w", err)
	}
	var keys []KEK
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return KEK{}, nil, fmt.Errorf("store: %s line %d: want \"<id> <base64 key>\"", path, i+1)
		}
		key, err := base64.StdEncoding.DecodeString(f[1])
		if err != nil || len(key) != 32 {
			return KEK{}, nil, fmt.Errorf("store: %s line %d: key is not base64 of 32 bytes", path, i+1)
		}
		keys = append(keys, KEK{ID: f[0], Key: key})
	}
	if len(keys) == 0 {
		return KEK{}, nil, fmt.Errorf("store: %s holds no key", path)
	}
	return keys[0], keys[1:], nil
}

func (d *DB) seal(k SigningKey) (storedKey, error) {
	if d.kek == nil {
		return storedKey{SigningKey: k}, nil
	}
	aead := d.kek.all[d.kek.current.ID]
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return storedKey{}, fmt.Errorf("seal signing key %q: %w", k.ID, err)
	}
	s := storedKey{SigningKey: k, Sealed: &sealed{KEK: d.kek.current.ID, Nonce: nonce,
		Data: aead.Seal(nil, nonce, k.Private, []byte("mandate signing key "+k.ID))}}
	s.Private = nil
	return s, nil
}

func (d *DB) open(s storedKey) (SigningKey, error) {
	if s.Sealed == nil {
		return s.SigningKey, nil
	}
	if d.kek == nil {
		return SigningKey{}, fmt.Errorf("signing key %q is sealed with key-encryption key %q and none is configured", s.ID, s.Sealed.KEK)
	}
	aead, ok := d.kek.all[s.Sealed.KEK]
	if !ok {
		return SigningKey{}, fmt.Errorf("signing key %q is sealed with unknown key-encryption key %q", s.ID, s.Sealed.KEK)
	}
	priv, err := aead.Open(nil, s.Sealed.Nonce, s.Sealed.Data, []byte("mandate signing key "+s.ID))
	if err != nil {
		return SigningKey{}, fmt.Errorf("signing key %q: open with key-encryption key %q: %w", s.ID, s.Sealed.KEK, err)
	}
	k := s.SigningKey
	k.Private = priv
	return k, nil
}

// PutSigningKey creates or replaces a signing key (sealed when a
// key-encryption key is configured).
func (d *DB) PutSigningKey(ctx context.Context, k SigningKey, audit ...AuditEntry) error {
	if k.ID == "" || len(k.ID) > MaxNameLen {
		return errors.New("store: signing key without an id")
	}
	s, err := d.seal(k)
	if err != nil {
		return wrap(err)
	}
	data, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("store: encode signing key %q: %w", k.ID, err)
	}
	_, err = d.update(ctx, audit, func(tx Tx) error { return tx.Put(tableSigning, k.ID, data) })
	return err
}

// SigningKeys returns every signing key, ordered by id.
func (d *DB) SigningKeys(ctx context.Context) ([]SigningKey, error) {
	var stored []storedKey
	err := d.view(ctx, func(tx Tx) error {
		stored = stored[:0]
		return tx.Scan(tableSigning, "", func(k string, v []byte) (bool, error) {
			var s storedKey
			if err := json.Unmarshal(v, &s); err != nil {
				return false, fmt.Errorf("decode signing key %q: %w", k, err)
			}
			stored = append(stored, s)
			return true, nil
		})
	})
	if err != nil {
		return nil, err
	}
	out := make([]SigningKey, 0, len(stored))
	for _, s := range stored {
		k, err := d.open(s)
		if err != nil {
			return nil, wrap(err)
		}
		out = append(out, k)
	}
	return out, nil
}

// DeleteSigningKey removes a signing key; ErrNotFound when there is none.
func (d *DB) DeleteSigningKey(ctx context.Context, id string, audit ...AuditEntry) error {
	_, err := d.update(ctx, audit, func(tx Tx) error {
		if _, ok, err := tx.Get(tableSigning, id); err != nil || !ok {
			if err == nil {
				err = fmt.Errorf("signing key %q: %w", id, ErrNotFound)
			}
			return err
		}
		return tx.Delete(tableSigning, id)
	})
	return err
}

// RewrapSigningKeys seals, with the current key-encryption key, every
// signing key stored in the clear or under an older KEK, and returns how
// many it rewrote: the step of a KEK rotation after which the old KEK can
// be dropped. Without a KEK it does nothing.
func (d *DB) RewrapSigningKeys(ctx context.Context) (int, error) {
	if d.kek == nil {
		return 0, nil
	}
	n := 0
	_, err := d.update(ctx, nil, func(tx Tx) error {
		n = 0
		var redo []storedKey
		err := tx.Scan(tableSigning, "", func(k string, v []byte) (bool, error) {
			var s storedKey
			if err := json.Unmarshal(v, &s); err != nil {
				return false, fmt.Errorf("decode signing key %q: %w", k, err)
			}
			if s.Sealed == nil || s.Sealed.KEK != d.kek.current.ID {
				redo = append(redo, s)
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		for _, s := range redo {
			k, err := d.open(s)
			if err != nil {
				return err
			}
			ns, err := d.seal(k)
			if err != nil {
				return err
			}
			data, err := json.Marshal(ns)
			if err != nil {
				return err
			}
			if err := tx.Put(tableSigning, k.ID, data); err != nil {
				return err
			}
		}
		n = len(redo)
		return nil
	})
	return n, err
}
