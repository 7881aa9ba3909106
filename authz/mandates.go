package authz

import (
	"time"

	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/policies"
)

// MandateVerifier checks an x-mandate token against the request carrying
// it.
type MandateVerifier interface {
	// VerifyRequest verifies token, checks that r.Subject holds it and
	// that the request falls inside its scope, and sets r.Intent and
	// r.Task from it. It returns the verified mandate even when the
	// request is out of its scope (then with OutOfScope set and an error).
	VerifyRequest(token string, r *policies.Request) (*VerifiedMandate, error)
}

// VerifiedMandate is a mandate that passed verification.
type VerifiedMandate struct {
	Mandate policies.Mandate
	// ChainIDs are the mandate ids from the root of the delegation chain
	// to this mandate, for the revocation check.
	ChainIDs []string
	// OutOfScope is set when the token verified but the request falls
	// outside its scope or intent.
	OutOfScope bool
}

// tokenVerifier verifies tokens; *mandate.Verifier implements it.
type tokenVerifier interface {
	Verify(token string) (*mandate.Claims, error)
}

// Mandates adapts a token verifier to the Check server: signature and
// claims (cached by the verifier), holder-of-key through the mTLS
// identity, then scope and intent.
type Mandates struct {
	v tokenVerifier
}

// NewMandates returns the adapter.
func NewMandates(v tokenVerifier) *Mandates { return &Mandates{v: v} }

// Reason codes of mandate checks beyond the verifier's own.
const (
	reasonTaskClash = "task_mismatch"
)

// VerifyRequest implements MandateVerifier.
func (m *Mandates) VerifyRequest(token string, r *policies.Request) (*VerifiedMandate, error) {
	c, err := m.v.Verify(token)
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
	// Declared intent can only narrow: a header naming another intent or
	// task than the mandate's is refused, never used.
	if r.Intent != "" && r.Intent != c.Intent {
		vm.OutOfScope = true
		return vm, &ReasonError{Reason: reasonIntentClash}
	}
	if r.Task != "" && r.Task != c.Task {
		vm.OutOfScope = true
		return vm, &ReasonError{Reason: reasonTaskClash}
	}
	r.Intent, r.Task = c.Intent, c.Task
	if !c.Scope.Allows(r.Destination, r.Host, r.Method, r.Path, r.GRPCService, r.GRPCMethod) {
		vm.OutOfScope = true
		return vm, &ReasonError{Reason: string(mandate.ReasonOutOfScope)}
	}
	return vm, nil
}
