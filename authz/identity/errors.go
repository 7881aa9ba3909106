// Package identity decides who is calling: it turns the peer Envoy reports
// in a CheckRequest (attributes.source.principal, the URI SAN of the
// verified mTLS client certificate) into a validated SPIFFE ID.
//
// Rules:
//
//   - The caller is source.principal. An empty principal (no mTLS) is an
//     error (ReasonNoPrincipal). Identity never comes from a header,
//     source.service or any other client-settable field.
//   - The principal must be a workload SPIFFE ID as SPIFFE-ID.md defines it
//     (see ParseID): stricter than go-spiffe's spiffeid.FromString, which
//     accepts trust-domain-only IDs and has no length limits.
//   - Its trust domain must be one of Config.TrustDomains.
//   - x-forwarded-client-cert (XFCC) is read only when the immediate peer is
//     exactly one of Config.TrustedProxies, and then only its last element,
//     which must carry exactly one URI= value; that value is the caller and
//     passes the same checks. Any problem with the XFCC of a trusted proxy is
//     an error; a peer that is not a trusted proxy has its XFCC ignored.
//
// Every error is an *Error whose Reason is safe to return to clients; its
// message is for logs only.
package identity

import "fmt"

// Reason is a short machine-readable code saying why an identity was
// rejected. It is safe to return to clients.
type Reason string

// Reason codes.
const (
	// ReasonNoPrincipal: the peer presented no principal (no mTLS).
	ReasonNoPrincipal Reason = "no_principal"
	// ReasonBadPrincipal: the principal is not a valid SPIFFE ID.
	ReasonBadPrincipal Reason = "bad_principal"
	// ReasonTrustDomainOnly: the principal names a trust domain, not a
	// workload (spiffe://td without a path).
	ReasonTrustDomainOnly Reason = "trust_domain_only"
	// ReasonPrincipalTooLong: the ID is longer than 2048 bytes or its
	// trust domain longer than 255 bytes.
	ReasonPrincipalTooLong Reason = "principal_too_long"
	// ReasonUntrustedDomain: the ID's trust domain is not allowed.
	ReasonUntrustedDomain Reason = "untrusted_domain"
	// ReasonBadXFCC: a trusted proxy sent a malformed
	// x-forwarded-client-cert header.
	ReasonBadXFCC Reason = "bad_xfcc"
	// ReasonXFCCMissing: a trusted proxy sent no x-forwarded-client-cert.
	ReasonXFCCMissing Reason = "xfcc_missing"
	// ReasonXFCCTooLong: the x-forwarded-client-cert header is over
	// MaxXFCCLength bytes or MaxXFCCElements elements.
	ReasonXFCCTooLong Reason = "xfcc_too_long"
	// ReasonXFCCNoURI: the last XFCC element has no URI= value.
	ReasonXFCCNoURI Reason = "xfcc_no_uri"
	// ReasonXFCCAmbiguousURI: the last XFCC element has several URI=
	// values.
	ReasonXFCCAmbiguousURI Reason = "xfcc_ambiguous_uri"
	// ReasonXFCCUntrustedProxy: Config.RequireXFCCBy is set and the last
	// XFCC element's By= is missing or is not the peer that sent it.
	ReasonXFCCUntrustedProxy Reason = "xfcc_untrusted_proxy"
	// ReasonBadDestination: the destination principal is not a valid
	// SPIFFE ID.
	ReasonBadDestination Reason = "bad_destination"
	// ReasonUntrustedDestination: the destination's trust domain is not
	// allowed.
	ReasonUntrustedDestination Reason = "untrusted_destination"
)

// Error is the error type of this package.
type Error struct {
	// Reason is safe for clients.
	Reason Reason
	// Err says what was wrong, for logs. It may quote client input.
	Err error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "identity: " + string(e.Reason)
	}
	return "identity: " + string(e.Reason) + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

func newErr(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}
