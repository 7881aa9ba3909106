package identity

import (
	"errors"
	"fmt"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mandate-dev/mandate/internal/slotcache"
)

// Config says whom to believe.
type Config struct {
	// TrustDomains are the trust domains callers and destinations may
	// belong to. At least one is required.
	TrustDomains []spiffeid.TrustDomain
	// TrustedProxies are the peer identities whose x-forwarded-client-cert
	// is believed (for example an ingress gateway that terminates the
	// client's mTLS). Exact ID match; they need not be in TrustDomains.
	TrustedProxies []spiffeid.ID
	// RequireXFCCBy additionally requires the last XFCC element's By= to be
	// the trusted proxy's own ID (Envoy sets By to the URI SAN of its own
	// certificate, which for a SPIFFE proxy is the SVID it presents to us).
	RequireXFCCBy bool
}

// Resolver extracts caller and destination identities. It is immutable and
// safe for concurrent use.
type Resolver struct {
	domains       map[spiffeid.TrustDomain]struct{}
	proxies       map[string]struct{}
	requireXFCCBy bool
	memo          *memo
}

// New validates cfg and returns a Resolver.
func New(cfg Config) (*Resolver, error) {
	if len(cfg.TrustDomains) == 0 {
		return nil, errors.New("identity: config: at least one trust domain is required")
	}
	r := &Resolver{
		domains:       make(map[spiffeid.TrustDomain]struct{}, len(cfg.TrustDomains)),
		proxies:       make(map[string]struct{}, len(cfg.TrustedProxies)),
		requireXFCCBy: cfg.RequireXFCCBy,
		memo:          slotcache.New[memoEntry](memoSlots),
	}
	for _, td := range cfg.TrustDomains {
		if _, err := ParseTrustDomain(td.Name()); err != nil {
			return nil, fmt.Errorf("identity: config: trust domain %q: %w", td.Name(), err)
		}
		r.domains[td] = struct{}{}
	}
	for _, id := range cfg.TrustedProxies {
		if _, err := ParseID(id.String()); err != nil {
			return nil, fmt.Errorf("identity: config: trusted proxy %q: %w", id.String(), err)
		}
		r.proxies[id.String()] = struct{}{}
	}
	return r, nil
}

// Caller returns the validated identity of the caller of a request: the
// peer's principal, or, when the peer is a trusted proxy, the URI of the
// last element of its x-forwarded-client-cert. headers are the request
// headers as Envoy sends them (names lowercased). See the package doc for
// the rules. Errors are *Error.
func (r *Resolver) Caller(source *authv3.AttributeContext_Peer, headers map[string]string) (spiffeid.ID, error) {
	principal := source.GetPrincipal()
	if principal == "" {
		return spiffeid.ID{}, &Error{Reason: ReasonNoPrincipal, Err: errors.New("peer has no principal (no mTLS client certificate)")}
	}
	peer, err := r.lookup(principal)
	if err != nil {
		return spiffeid.ID{}, err
	}
	if peer.proxy {
		return r.forwardedCaller(peer.id, headers)
	}
	if !peer.trusted {
		return spiffeid.ID{}, r.checkDomain(peer.id, ReasonUntrustedDomain)
	}
	return peer.id, nil
}

func (r *Resolver) forwardedCaller(proxy spiffeid.ID, headers map[string]string) (spiffeid.ID, error) {
	v := headers[XFCCHeader]
	if v == "" {
		return spiffeid.ID{}, newErr(ReasonXFCCMissing, "trusted proxy %q sent no %s", proxy, XFCCHeader)
	}
	elems, err := ParseXFCC(v)
	if err != nil {
		return spiffeid.ID{}, err
	}
	last := elems[len(elems)-1]
	if r.requireXFCCBy && last.By != proxy.String() {
		return spiffeid.ID{}, newErr(ReasonXFCCUntrustedProxy, "last %s element was added By=%q, not by peer %q", XFCCHeader, last.By, proxy)
	}
	switch len(last.URI) {
	case 0:
		return spiffeid.ID{}, newErr(ReasonXFCCNoURI, "last %s element has no URI", XFCCHeader)
	case 1:
	default:
		return spiffeid.ID{}, newErr(ReasonXFCCAmbiguousURI, "last %s element has %d URIs", XFCCHeader, len(last.URI))
	}
	id, err := ParseID(last.URI[0])
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			return spiffeid.ID{}, &Error{Reason: e.Reason, Err: fmt.Errorf("%s URI: %w", XFCCHeader, e.Err)}
		}
		return spiffeid.ID{}, err
	}
	if err := r.checkDomain(id, ReasonUntrustedDomain); err != nil {
		return spiffeid.ID{}, err
	}
	return id, nil
}

// Destination returns the destination principal Envoy reported (the URI
// SAN of the certificate the sidecar serves with). Empty is allowed and
// returns "". Otherwise it must be a valid workload SPIFFE ID (ParseID) in
// one of the configured trust domains: a destination outside them is not
// one this deployment authorizes for. Errors are *Error with
// ReasonBadDestination (the parse reason is in the message),
// ReasonUntrustedDestination.
func (r *Resolver) Destination(dest *authv3.AttributeContext_Peer) (string, error) {
	p := dest.GetPrincipal()
	if p == "" {
		return "", nil
	}
	e, err := r.lookup(p)
	if err != nil {
		return "", &Error{Reason: ReasonBadDestination, Err: fmt.Errorf("destination principal: %w", err)}
	}
	if !e.trusted {
		return "", r.checkDomain(e.id, ReasonUntrustedDestination)
	}
	return e.id.String(), nil
}

func (r *Resolver) checkDomain(id spiffeid.ID, reason Reason) error {
	if _, ok := r.domains[id.TrustDomain()]; ok {
		return nil
	}
	return newErr(reason, "trust domain %q of %q is not allowed", id.TrustDomain().Name(), id.String())
}
