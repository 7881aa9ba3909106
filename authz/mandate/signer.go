package mandate

import (
	"crypto"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	jose "github.com/go-jose/go-jose/v4"
)

// TokenType is the JWS "typ" header of a mandate.
const TokenType = "mandate+jwt"

// Signer mints mandates with one Ed25519 key.
type Signer struct {
	kid    string
	issuer string
	signer jose.Signer
	rand   io.Reader
}

// NewSigner returns a Signer that signs with key under key id kid and stamps
// issuer into every mandate.
func NewSigner(kid string, key ed25519.PrivateKey, issuer string) (*Signer, error) {
	if kid == "" || len(kid) > maxLabelLen {
		return nil, errors.New("mandate: signer: key id must be 1..128 bytes")
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("mandate: signer: Ed25519 private key must be %d bytes, got %d", ed25519.PrivateKeySize, len(key))
	}
	if err := checkLabel("issuer", issuer); err != nil {
		return nil, fmt.Errorf("mandate: signer: %w", err)
	}
	js, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.EdDSA, Key: jose.JSONWebKey{Key: key, KeyID: kid, Algorithm: string(jose.EdDSA)}},
		(&jose.SignerOptions{}).WithType(TokenType),
	)
	if err != nil {
		return nil, fmt.Errorf("mandate: signer: %w", err)
	}
	return &Signer{kid: kid, issuer: issuer, signer: js}, nil
}

// KeyID returns the id of the signing key, carried in the "kid" header.
func (s *Signer) KeyID() string { return s.kid }

// Sign fills c.Issuer (and c.ID with a fresh random id when empty), validates
// c and returns the compact JWS. It refuses claims whose lifetime exp - iat
// is not positive.
func (s *Signer) Sign(c *Claims) (string, error) {
	if c == nil {
		return "", errors.New("mandate: sign: nil claims")
	}
	if c.Expiry <= c.IssuedAt {
		return "", errorf(ReasonBadClaims, "sign: lifetime exp-iat must be positive")
	}
	c.Issuer = s.issuer
	if c.ID == "" {
		id, err := NewID(s.rand)
		if err != nil {
			return "", err
		}
		c.ID = id
	}
	if err := c.Validate(); err != nil {
		return "", fmt.Errorf("mandate: sign: %w", err)
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("mandate: sign: %w", err)
	}
	obj, err := s.signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("mandate: sign: %w", err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("mandate: sign: %w", err)
	}
	return tok, nil
}

// GenerateKey creates an Ed25519 key pair from rand (crypto/rand when nil)
// and returns it with its key id, KeyID(pub).
func GenerateKey(rand io.Reader) (kid string, pub ed25519.PublicKey, priv ed25519.PrivateKey, err error) {
	pub, priv, err = ed25519.GenerateKey(rand)
	if err != nil {
		return "", nil, nil, fmt.Errorf("mandate: generating key: %w", err)
	}
	kid, err = KeyID(pub)
	if err != nil {
		return "", nil, nil, err
	}
	return kid, pub, priv, nil
}

// KeyID derives a key id from an Ed25519 public key: its RFC 7638 JWK
// thumbprint (SHA-256), unpadded base64url (43 characters).
func KeyID(pub ed25519.PublicKey) (string, error) {
	if len(pub) != ed25519.PublicKeySize {
		return "", fmt.Errorf("mandate: Ed25519 public key must be %d bytes, got %d", ed25519.PublicKeySize, len(pub))
	}
	jwk := jose.JSONWebKey{Key: pub}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("mandate: key thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}
