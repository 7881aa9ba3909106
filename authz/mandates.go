package authz

import "github.com/mandate-dev/mandate/policies"

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
