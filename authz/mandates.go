package authz

import (
	"time"

	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/policies"
)

// MandateVerifier checks an x-mandate token against the request carrying
// it.
type MandateVerifier interface {
	// VerifyRequest verifies token at now (the decision's clock), checks
	// that r.Subject holds it and that the request falls inside its
	// scope. r is passed by value (a pointer into the caller's request
	// would move every decision's attributes to the heap); the caller
	// binds the returned mandate to the request (attrs.BindMandate). It returns the verified mandate
	// even when the request is out of its scope (then with OutOfScope set
	// and an error) or presented by another workload (with an error).
	VerifyRequest(token string, r policies.Request, now time.Time) (*VerifiedMandate, error)
}

// VerifiedMandate is a mandate that passed verification.
type VerifiedMandate struct {
	Mandate policies.Mandate
	// ChainIDs are the mandate ids from the root of the delegation chain
	// to this mandate, for the revocation check.
	ChainIDs []string
	// OutOfScope is set when the token verified but the request falls
	// outside its scope.
	OutOfScope bool
}

// tokenVerifier verifies tokens; *mandate.Verifier implements it.
type tokenVerifier interface {
	VerifyAt(token string, now time.Time) (*mandate.Claims, error)
}

// Mandates adapts a token verifier to the Check server: signature and
// claims (cached by the verifier), holder-of-key through the mTLS
// identity, then scope.
type Mandates struct {
	v tokenVerifier
}

// NewMandates returns the adapter.
func NewMandates(v tokenVerifier) *Mandates { return &Mandates{v: v} }

// VerifyRequest implements MandateVerifier.
func (m *Mandates) VerifyRequest(token string, r policies.Request, now time.Time) (*VerifiedMandate, error) {
	c, err := m.v.VerifyAt(token, now)
	if err != nil {
		return nil, &ReasonError{Reason: string(mandate.ReasonOf(err)), Err: err}
	}
	vm := &VerifiedMandate{
		Mandate: policies.Mandate{
			ID: c.ID, Issuer: c.Issuer, Task: c.Task, Intent: c.Intent,
			Chain: c.ChainSubjects(), ExpiresAt: time.Unix(c.Expiry, 0),
		},
		ChainIDs: c.ChainIDs(),
	}
	if err := c.CheckHolder(r.Subject); err != nil {
		// A stolen token presented by another workload: not drift of the
		// holder but an attack, so not OutOfScope. The mandate is
		// returned for the decision log (which token was replayed).
		return vm, &ReasonError{Reason: string(mandate.ReasonOf(err)), Err: err}
	}
	if !c.Scope.Allows(r.Destination, r.Host, r.Method, r.Path, r.GRPCService, r.GRPCMethod) ||
		r.MCP != nil && !c.Scope.AllowsMCP(r.MCP.Method, r.MCP.Tool, r.MCP.ResourceURI) {
		// Out of scope, an MCP tool included: drift, counted.
		vm.OutOfScope = true
		return vm, &ReasonError{Reason: string(mandate.ReasonOutOfScope)}
	}
	return vm, nil
}
