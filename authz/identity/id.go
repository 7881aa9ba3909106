package identity

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Limits from SPIFFE-ID.md: implementations must accept IDs up to 2048
// bytes and trust domain names up to 255 bytes; longer ones are rejected.
const (
	MaxIDLength          = 2048
	MaxTrustDomainLength = 255
)

const scheme = "spiffe://"

// ParseID parses a workload SPIFFE ID strictly per SPIFFE-ID.md:
//
//   - the scheme is exactly "spiffe://" (lowercase);
//   - the trust domain is 1..255 bytes of [a-z0-9._-]: no uppercase, no
//     port, no userinfo, no percent-encoding;
//   - a path is required (a trust-domain-only ID names no workload);
//   - path segments are non-empty [A-Za-z0-9._-], never "." or "..", and
//     there is no trailing slash, query or fragment;
//   - the whole ID is at most 2048 bytes.
//
// It does not depend on go-spiffe's build tags (spiffeid_charset_backcompat
// widens go-spiffe's charset; ParseID never does). Errors are *Error with
// ReasonBadPrincipal, ReasonTrustDomainOnly or ReasonPrincipalTooLong.
// ParseID does not allocate on success.
func ParseID(s string) (spiffeid.ID, error) {
	if err := validateID(s); err != nil {
		return spiffeid.ID{}, err
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		// Unreachable while validateID is at least as strict as go-spiffe;
		// fail closed if it ever is not.
		return spiffeid.ID{}, &Error{Reason: ReasonBadPrincipal, Err: err}
	}
	return id, nil
}

func validateID(s string) *Error {
	switch {
	case s == "":
		return &Error{Reason: ReasonBadPrincipal, Err: errEmptyID}
	case len(s) > MaxIDLength:
		return newErr(ReasonPrincipalTooLong, "SPIFFE ID is %d bytes, max %d", len(s), MaxIDLength)
	case !strings.HasPrefix(s, scheme):
		if len(s) >= len(scheme) && strings.EqualFold(s[:len(scheme)], scheme) {
			return &Error{Reason: ReasonBadPrincipal, Err: errSchemeCase}
		}
		return &Error{Reason: ReasonBadPrincipal, Err: errScheme}
	}
	rest := s[len(scheme):]
	i := 0
	for ; i < len(rest) && rest[i] != '/'; i++ {
		if c := rest[i]; !isTrustDomainChar(c) {
			return &Error{Reason: ReasonBadPrincipal, Err: trustDomainCharErr(c)}
		}
	}
	switch {
	case i == 0:
		return &Error{Reason: ReasonBadPrincipal, Err: errNoTrustDomain}
	case i > MaxTrustDomainLength:
		return newErr(ReasonPrincipalTooLong, "trust domain is %d bytes, max %d", i, MaxTrustDomainLength)
	case i == len(rest):
		return &Error{Reason: ReasonTrustDomainOnly, Err: errNoPath}
	}
	if err := validatePath(rest[i:]); err != nil {
		return &Error{Reason: ReasonBadPrincipal, Err: err}
	}
	return nil
}

// validatePath checks p, which starts with '/'.
func validatePath(p string) error {
	segStart := 1
	for j := 1; j <= len(p); j++ {
		if j < len(p) && p[j] != '/' {
			if c := p[j]; !isPathChar(c) {
				return pathCharErr(c)
			}
			continue
		}
		seg := p[segStart:j]
		switch seg {
		case "":
			if j == len(p) {
				return errTrailingSlash
			}
			return errEmptySegment
		case ".", "..":
			return errDotSegment
		}
		segStart = j + 1
	}
	return nil
}

// ParseTrustDomain parses a trust domain name (not an ID): 1..255 bytes of
// [a-z0-9._-].
func ParseTrustDomain(name string) (spiffeid.TrustDomain, error) {
	if name == "" {
		return spiffeid.TrustDomain{}, &Error{Reason: ReasonBadPrincipal, Err: errNoTrustDomain}
	}
	if len(name) > MaxTrustDomainLength {
		return spiffeid.TrustDomain{}, newErr(ReasonPrincipalTooLong, "trust domain is %d bytes, max %d", len(name), MaxTrustDomainLength)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isTrustDomainChar(c) {
			return spiffeid.TrustDomain{}, &Error{Reason: ReasonBadPrincipal, Err: trustDomainCharErr(c)}
		}
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, &Error{Reason: ReasonBadPrincipal, Err: err}
	}
	return td, nil
}

var (
	errEmptyID       = errors.New("empty SPIFFE ID")
	errScheme        = errors.New(`not a SPIFFE ID: scheme must be "spiffe://"`)
	errSchemeCase    = errors.New(`scheme must be lowercase "spiffe://"`)
	errNoTrustDomain = errors.New("missing trust domain")
	errNoPath        = errors.New("trust-domain-only ID names no workload: a path is required")
	errTrailingSlash = errors.New("path has a trailing slash")
	errEmptySegment  = errors.New("path has an empty segment")
	errDotSegment    = errors.New(`path has a "." or ".." segment`)
)

func isTrustDomainChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_'
}

func isPathChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_'
}

func trustDomainCharErr(c byte) error {
	switch {
	case c >= 'A' && c <= 'Z':
		return errors.New("trust domain must be lowercase")
	case c == ':':
		return errors.New("trust domain must not have a port")
	case c == '@':
		return errors.New("trust domain must not have userinfo")
	case c == '%':
		return errors.New("trust domain must not be percent-encoded")
	case c == '?':
		return errors.New("SPIFFE ID must not have a query")
	case c == '#':
		return errors.New("SPIFFE ID must not have a fragment")
	}
	return fmt.Errorf("trust domain has invalid character %q", c)
}

func pathCharErr(c byte) error {
	switch c {
	case '%':
		return errors.New("path must not be percent-encoded")
	case '?':
		return errors.New("SPIFFE ID must not have a query")
	case '#':
		return errors.New("SPIFFE ID must not have a fragment")
	}
	return fmt.Errorf("path has invalid character %q", c)
}
