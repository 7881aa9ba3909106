package mandate

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// Verifier defaults and limits.
const (
	DefaultSkew          = 30 * time.Second
	MaxSkew              = 2 * time.Minute
	DefaultMaxTTL        = time.Hour
	DefaultMaxDepth      = 4
	DefaultMaxTokenBytes = 8 << 10
	maxMaxTokenBytes     = 64 << 10
	DefaultCacheSize     = 4096
)

// Clock tells the time. Tests pass a fake.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Key is a mandate verification key: an Ed25519 public key, its id (the JWS
// "kid") and the window in which tokens it signed are accepted. A zero
// NotBefore or NotAfter leaves that side open.
type Key struct {
	ID        string
	Public    ed25519.PublicKey
	NotBefore time.Time
	NotAfter  time.Time
}

// VerifierConfig configures a Verifier. Zero values take the defaults.
type VerifierConfig struct {
	Issuer   string // required: exact "iss"
	Audience string // required: exact "aud"
	Keys     []Key  // initial key set; SetKeys replaces it
	// Skew is the clock tolerance applied to iat, nbf and exp: default 30s,
	// at most 2m.
	Skew time.Duration
	// MaxTTL caps exp - iat: default 1h.
	MaxTTL time.Duration
	// MaxDepth caps the delegation depth: default 4, at most MaxChainDepth.
	MaxDepth int
	Clock    Clock // default: the system clock
	// MaxTokenBytes: default 8 KiB, at most 64 KiB.
	MaxTokenBytes int
	// CacheSize bounds the verification cache (entries): default 4096;
	// negative disables the cache.
	CacheSize int
}

// Verifier checks mandates. It is safe for concurrent use.
type Verifier struct {
	issuer, audience string
	skew             time.Duration
	maxTTL           time.Duration
	maxDepth         int
	clock            Clock
	maxBytes         int
	cache            *verifyCache // nil when disabled

	mu   sync.Mutex // serializes SetKeys
	keys atomic.Pointer[keySet]
}

type keySet struct {
	gen  uint64
	keys map[string]*keyEntry
}

type keyEntry struct {
	pub   ed25519.PublicKey
	from  int64 // Unix ns; math.MinInt64 when open
	until int64 // Unix ns, exclusive; math.MaxInt64 when open
}

// NewVerifier validates cfg and returns a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("mandate: verifier: issuer and audience are required")
	}
	v := &Verifier{
		issuer:   cfg.Issuer,
		audience: cfg.Audience,
		skew:     cfg.Skew,
		maxTTL:   cfg.MaxTTL,
		maxDepth: cfg.MaxDepth,
		clock:    cfg.Clock,
		maxBytes: cfg.MaxTokenBytes,
	}
	switch {
	case v.skew == 0:
		v.skew = DefaultSkew
	case v.skew < 0 || v.skew > MaxSkew:
		return nil, fmt.Errorf("mandate: verifier: skew %v outside (0, %v]", v.skew, MaxSkew)
	}
	switch {
	case v.maxTTL == 0:
		v.maxTTL = DefaultMaxTTL
	case v.maxTTL < 0:
		return nil, fmt.Errorf("mandate: verifier: negative max TTL %v", v.maxTTL)
	}
	switch {
	case v.maxDepth == 0:
		v.maxDepth = DefaultMaxDepth
	case v.maxDepth < 0 || v.maxDepth > MaxChainDepth:
		return nil, fmt.Errorf("mandate: verifier: max depth %d outside [0, %d]", v.maxDepth, MaxChainDepth)
	}
	switch {
	case v.maxBytes == 0:
		v.maxBytes = DefaultMaxTokenBytes
	case v.maxBytes < 0 || v.maxBytes > maxMaxTokenBytes:
		return nil, fmt.Errorf("mandate: verifier: max token bytes %d outside [1, %d]", v.maxBytes, maxMaxTokenBytes)
	}
	if v.clock == nil {
		v.clock = systemClock{}
	}
	switch {
	case cfg.CacheSize == 0:
		v.cache = newVerifyCache(DefaultCacheSize)
	case cfg.CacheSize > 0:
		v.cache = newVerifyCache(cfg.CacheSize)
	}
	v.keys.Store(&keySet{keys: map[string]*keyEntry{}})
	if err := v.SetKeys(cfg.Keys); err != nil {
		return nil, err
	}
	return v, nil
}

// SetKeys atomically replaces the key set. It is all or nothing: on error
// the current set stays. Every change of key set starts a new generation,
// so cached verifications made under the old set are no longer served;
// tokens signed by keys still present are simply verified again once. The
// same set again (any order) is not a change: the cache stays warm.
func (v *Verifier) SetKeys(keys []Key) error {
	m := make(map[string]*keyEntry, len(keys))
	for _, k := range keys {
		if k.ID == "" || len(k.ID) > maxLabelLen {
			return fmt.Errorf("mandate: key id %q must be 1..%d bytes", k.ID, maxLabelLen)
		}
		if len(k.Public) != ed25519.PublicKeySize {
			return fmt.Errorf("mandate: key %q: Ed25519 public key must be %d bytes, got %d", k.ID, ed25519.PublicKeySize, len(k.Public))
		}
		if _, dup := m[k.ID]; dup {
			return fmt.Errorf("mandate: key id %q given twice", k.ID)
		}
		e := &keyEntry{
			pub:   bytes.Clone(k.Public),
			from:  math.MinInt64,
			until: math.MaxInt64,
		}
		if !k.NotBefore.IsZero() {
			e.from = k.NotBefore.UnixNano()
		}
		if !k.NotAfter.IsZero() {
			e.until = k.NotAfter.UnixNano()
		}
		if e.until <= e.from {
			return fmt.Errorf("mandate: key %q: NotAfter not after NotBefore", k.ID)
		}
		m[k.ID] = e
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	cur := v.keys.Load()
	if sameKeys(cur.keys, m) {
		// A push that does not change the keys (most pushes carry
		// revocations or policies) keeps the verification cache.
		return nil
	}
	v.keys.Store(&keySet{gen: cur.gen + 1, keys: m})
	return nil
}

func sameKeys(a, b map[string]*keyEntry) bool {
	if len(a) != len(b) {
		return false
	}
	for id, x := range a {
		y, ok := b[id]
		if !ok || x.from != y.from || x.until != y.until || !bytes.Equal(x.pub, y.pub) {
			return false
		}
	}
	return true
}

// Verify checks a mandate token and returns its claims, which are shared
// and must not be modified. It does not check the holder (CheckHolder),
// the request against the scope (Scope.Allows) or revocation: the caller
// does those. Every error is an *Error with a Reason.
func (v *Verifier) Verify(token string) (*Claims, error) {
	return v.VerifyAt(token, v.clock.Now())
}

// VerifyAt is Verify at the time at: a decision passes its own clock, so
// that everything it checks is checked at one instant.
func (v *Verifier) VerifyAt(token string, at time.Time) (*Claims, error) {
	if len(token) > v.maxBytes {
		return nil, errorf(ReasonTooLarge, "token is %d bytes, limit %d", len(token), v.maxBytes)
	}
	if token == "" {
		return nil, errorf(ReasonMalformed, "empty token")
	}
	now := at.UnixNano()
	ks := v.keys.Load()
	var h uint64
	if v.cache != nil {
		h = v.cache.hash(token)
		if e := v.cache.get(h, token); e != nil && e.gen == ks.gen {
			if err := e.check(now); err != nil {
				return nil, err
			}
			return e.claims, nil
		}
	}
	e, err := v.verify(token, ks, now)
	if err != nil {
		return nil, err
	}
	if v.cache != nil {
		v.cache.put(h, token, e, now)
	}
	return e.claims, nil
}

func (e *cacheEntry) check(now int64) error {
	switch {
	case now < e.keyFrom || now >= e.keyUntil:
		return errorf(ReasonUnknownKey, "signing key not valid at this time")
	case now < e.from:
		return errorf(ReasonNotYetValid, "not valid before %v", time.Unix(0, e.from).UTC())
	case now >= e.until:
		return errorf(ReasonExpired, "expired at %v", time.Unix(0, e.until).UTC())
	}
	return nil
}

type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

var allowedAlgs = []jose.SignatureAlgorithm{jose.EdDSA}

// verify does the full check of a token not found in the cache.
func (v *Verifier) verify(token string, ks *keySet, now int64) (*cacheEntry, error) {
	// Compact serialization only: three base64url parts, no padding, no
	// whitespace. This also rejects JSON serialization and joined tokens.
	for i := 0; i < len(token); i++ {
		if !b64urlByte(token[i]) && token[i] != '.' {
			return nil, errorf(ReasonMalformed, "byte %#x at %d is not compact JWS", token[i], i)
		}
	}
	if strings.Count(token, ".") != 2 {
		return nil, errorf(ReasonMalformed, "compact JWS must have three parts")
	}
	hdrB64, rest, _ := strings.Cut(token, ".")
	_, sigB64, _ := strings.Cut(rest, ".")

	var h header
	hdrJSON, err := base64.RawURLEncoding.Strict().DecodeString(hdrB64)
	if err != nil {
		return nil, errorf(ReasonMalformed, "header: %w", err)
	}
	if err := decodeStrict(hdrJSON, &h); err != nil {
		return nil, errorf(ReasonMalformed, "header: %w", err)
	}
	if h.Alg != string(jose.EdDSA) {
		return nil, errorf(ReasonBadAlg, "alg %q, want EdDSA", h.Alg)
	}
	if h.Typ != TokenType {
		return nil, errorf(ReasonMalformed, "typ %q, want %q", h.Typ, TokenType)
	}
	key, ok := ks.keys[h.Kid]
	if !ok {
		return nil, errorf(ReasonUnknownKey, "kid %q not in the key set", h.Kid)
	}
	if now < key.from || now >= key.until {
		return nil, errorf(ReasonUnknownKey, "key %q not valid at this time", h.Kid)
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(sigB64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return nil, errorf(ReasonMalformed, "signature is not %d bytes of canonical base64url", ed25519.SignatureSize)
	}

	jws, err := jose.ParseSignedCompact(token, allowedAlgs)
	if err != nil {
		return nil, errorf(ReasonMalformed, "%w", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, errorf(ReasonMalformed, "want exactly one signature, got %d", len(jws.Signatures))
	}
	payload, err := jws.Verify(key.pub)
	if err != nil {
		return nil, errorf(ReasonBadSignature, "%w", err)
	}

	c := new(Claims)
	if err := decodeStrict(payload, c); err != nil {
		return nil, errorf(ReasonBadClaims, "payload: %w", err)
	}
	if c.Issuer != v.issuer {
		return nil, errorf(ReasonWrongIssuer, "iss %q, want %q", c.Issuer, v.issuer)
	}
	if c.Audience != v.audience {
		return nil, errorf(ReasonWrongAudience, "aud %q, want %q", c.Audience, v.audience)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Depth > v.maxDepth {
		return nil, errorf(ReasonBadChain, "depth %d over the limit %d", c.Depth, v.maxDepth)
	}
	if ttl := c.TTL(); ttl > v.maxTTL {
		return nil, errorf(ReasonBadClaims, "lifetime %v over the limit %v", ttl, v.maxTTL)
	}
	iat := c.IssuedAt * int64(time.Second)
	if key.from != math.MinInt64 && iat < key.from-int64(v.skew) {
		return nil, errorf(ReasonUnknownKey, "issued before key %q became valid", h.Kid)
	}
	// iat <= nbf (Validate), so nbf bounds the start of validity; a token
	// issued in the future also has nbf in the future.
	e := &cacheEntry{
		claims:   c,
		gen:      ks.gen,
		from:     c.NotBefore*int64(time.Second) - int64(v.skew),
		until:    c.Expiry*int64(time.Second) + int64(v.skew),
		keyFrom:  key.from,
		keyUntil: key.until,
	}
	if err := e.check(now); err != nil {
		return nil, err
	}
	cs, err := compileScope(&c.Scope)
	if err != nil {
		return nil, err
	}
	c.Scope.compiled = cs
	return e, nil
}

func b64urlByte(b byte) bool {
	return b >= 'A' && b <= 'Z' || b >= 'a' && b <= 'z' || b >= '0' && b <= '9' || b == '-' || b == '_'
}

// decodeStrict decodes exactly one JSON value, refusing unknown fields (an
// unknown claim may be a restriction this verifier would silently drop) and
// trailing data.
func decodeStrict(data []byte, out any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after JSON value")
	}
	return nil
}
