package mandate

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"time"

	"github.com/mandate-dev/mandate/authz/identity"
)

// Limits on claim contents. They bound the work a verifier does per token
// and keep every field printable in logs.
const (
	// MaxChainDepth is the absolute cap on delegation depth a token may
	// carry; Verifier and Delegate enforce their own, lower, caps as well.
	MaxChainDepth = 16
	maxIDLen      = 2048 // SPIFFE-ID.md: IDs up to 2048 bytes
	maxLabelLen   = 128  // task, intent, issuer, audience
	idBytes       = 16   // jti: 128 random bits
	// maxUnix bounds claim times (2242-03-16) so that nanosecond
	// arithmetic on them cannot overflow.
	maxUnix = 1 << 33
)

// Link is one ancestor in a delegation chain: the id of an ancestor mandate
// and the subject it was issued to.
type Link struct {
	ID      string `json:"jti"`
	Subject string `json:"sub"`
}

// Claims is the payload of a mandate. Times are whole seconds since the Unix
// epoch, as in JWT (RFC 7519 NumericDate).
//
// Claims returned by Verifier.Verify are shared with the verification cache
// and must be treated as read-only.
type Claims struct {
	Issuer    string `json:"iss"`
	Subject   string `json:"sub"`
	Audience  string `json:"aud"`
	ID        string `json:"jti"`
	IssuedAt  int64  `json:"iat"`
	NotBefore int64  `json:"nbf"`
	Expiry    int64  `json:"exp"`
	Task      string `json:"task"`
	Intent    string `json:"intent"`
	Scope     Scope  `json:"scope"`
	// Chain lists the ancestors from the root mandate down to this
	// mandate's parent; it is empty for a root mandate.
	Chain []Link `json:"chain,omitempty"`
	// Depth is len(Chain), carried explicitly so a reader sees it at once.
	Depth int `json:"depth"`
}

// ChainIDs returns the ids of every mandate in the ancestry, root first and
// this mandate's own id last. Revoking any of them revokes this mandate.
func (c *Claims) ChainIDs() []string {
	out := make([]string, 0, len(c.Chain)+1)
	for _, l := range c.Chain {
		out = append(out, l.ID)
	}
	return append(out, c.ID)
}

// ChainSubjects returns the subjects of every mandate in the ancestry, root
// first and this mandate's own subject last.
func (c *Claims) ChainSubjects() []string {
	out := make([]string, 0, len(c.Chain)+1)
	for _, l := range c.Chain {
		out = append(out, l.Subject)
	}
	return append(out, c.Subject)
}

// IssuedAtTime, NotBeforeTime and ExpiryTime return the claim times as
// time.Time.
func (c *Claims) IssuedAtTime() time.Time  { return time.Unix(c.IssuedAt, 0) }
func (c *Claims) NotBeforeTime() time.Time { return time.Unix(c.NotBefore, 0) }
func (c *Claims) ExpiryTime() time.Time    { return time.Unix(c.Expiry, 0) }

// TTL is the lifetime the issuer granted: exp - iat.
func (c *Claims) TTL() time.Duration { return time.Duration(c.Expiry-c.IssuedAt) * time.Second }

// CheckHolder checks holder-of-key: a mandate is valid only when presented
// over mTLS by its subject. callerSPIFFEID is the verified peer identity.
func (c *Claims) CheckHolder(callerSPIFFEID string) error {
	if callerSPIFFEID == "" || callerSPIFFEID != c.Subject {
		return errorf(ReasonWrongHolder, "presented by %q, issued to %q", callerSPIFFEID, c.Subject)
	}
	return nil
}

// Validate checks that the claims are complete and well formed: it does not
// look at the clock, the issuer's identity or the audience (the Verifier
// does). Errors carry ReasonBadClaims, or ReasonBadChain for the chain and
// depth.
func (c *Claims) Validate() error {
	if err := checkLabel("iss", c.Issuer); err != nil {
		return err
	}
	if err := checkSPIFFEID("sub", c.Subject); err != nil {
		return err
	}
	if err := checkLabel("aud", c.Audience); err != nil {
		return err
	}
	if err := checkID("jti", c.ID); err != nil {
		return err
	}
	if err := checkLabel("task", c.Task); err != nil {
		return err
	}
	if err := checkLabel("intent", c.Intent); err != nil {
		return err
	}
	switch {
	case c.IssuedAt <= 0:
		return errorf(ReasonBadClaims, "iat missing")
	case c.NotBefore < c.IssuedAt:
		return errorf(ReasonBadClaims, "nbf before iat")
	case c.Expiry <= c.NotBefore:
		return errorf(ReasonBadClaims, "exp not after nbf")
	case c.Expiry > maxUnix:
		return errorf(ReasonBadClaims, "exp too far in the future")
	}
	if _, err := compileScope(&c.Scope); err != nil {
		return err
	}
	return c.validateChain()
}

func (c *Claims) validateChain() error {
	if c.Depth != len(c.Chain) {
		return errorf(ReasonBadChain, "depth %d but chain has %d links", c.Depth, len(c.Chain))
	}
	if c.Depth > MaxChainDepth {
		return errorf(ReasonBadChain, "depth %d over the limit %d", c.Depth, MaxChainDepth)
	}
	for i, l := range c.Chain {
		if err := checkID("chain jti", l.ID); err != nil {
			return &Error{Reason: ReasonBadChain, Err: err.(*Error).Err}
		}
		if err := checkSPIFFEID("chain sub", l.Subject); err != nil {
			return &Error{Reason: ReasonBadChain, Err: err.(*Error).Err}
		}
		if l.ID == c.ID {
			return errorf(ReasonBadChain, "chain link %d repeats the mandate's own id", i)
		}
		for _, prev := range c.Chain[:i] {
			if prev.ID == l.ID {
				return errorf(ReasonBadChain, "chain repeats id %q", l.ID)
			}
		}
	}
	return nil
}

// NewID returns a fresh mandate id: 128 random bits, unpadded base64url.
func NewID(r io.Reader) (string, error) {
	var b [idBytes]byte
	if r == nil {
		r = rand.Reader
	}
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return "", fmt.Errorf("mandate: reading random id: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func checkID(field, id string) error {
	if len(id) != base64.RawURLEncoding.EncodedLen(idBytes) {
		return errorf(ReasonBadClaims, "%s: want %d base64url characters, got %d", field, base64.RawURLEncoding.EncodedLen(idBytes), len(id))
	}
	var b [idBytes]byte
	if n, err := base64.RawURLEncoding.Strict().Decode(b[:], []byte(id)); err != nil || n != idBytes {
		return errorf(ReasonBadClaims, "%s: not canonical base64url", field)
	}
	return nil
}

// checkLabel accepts 1..128 bytes of [A-Za-z0-9._:/@-].
func checkLabel(field, s string) error {
	if s == "" {
		return errorf(ReasonBadClaims, "%s missing", field)
	}
	if len(s) > maxLabelLen {
		return errorf(ReasonBadClaims, "%s longer than %d bytes", field, maxLabelLen)
	}
	for i := 0; i < len(s); i++ {
		if !labelByte(s[i]) {
			return errorf(ReasonBadClaims, "%s: byte %#x not allowed", field, s[i])
		}
	}
	return nil
}

func labelByte(b byte) bool {
	switch {
	case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		return true
	}
	switch b {
	case '.', '_', ':', '/', '@', '-':
		return true
	}
	return false
}

// checkSPIFFEID checks a workload SPIFFE ID with Mandate's one checker
// (identity.ParseID).
func checkSPIFFEID(field, s string) error {
	if _, err := identity.ParseID(s); err != nil {
		return errorf(ReasonBadClaims, "%s: %w", field, err)
	}
	return nil
}
