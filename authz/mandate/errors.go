package mandate

import (
	"errors"
	"fmt"
)

// Reason is a stable, machine-readable code for why a mandate was refused.
// Reasons go into deny responses and the decision log.
type Reason string

// Reasons returned in Error.
const (
	ReasonMalformed     Reason = "mandate_malformed"
	ReasonBadSignature  Reason = "mandate_bad_signature"
	ReasonUnknownKey    Reason = "mandate_unknown_key"
	ReasonExpired       Reason = "mandate_expired"
	ReasonNotYetValid   Reason = "mandate_not_yet_valid"
	ReasonWrongAudience Reason = "mandate_wrong_audience"
	ReasonWrongIssuer   Reason = "mandate_wrong_issuer"
	ReasonBadAlg        Reason = "mandate_bad_alg"
	ReasonTooLarge      Reason = "mandate_too_large"
	ReasonBadClaims     Reason = "mandate_bad_claims"
	ReasonWrongHolder   Reason = "mandate_wrong_holder"
	ReasonOutOfScope    Reason = "mandate_out_of_scope"
	ReasonBadChain      Reason = "mandate_bad_chain"
)

// Error is the error type of this package: a Reason and the detail behind it.
type Error struct {
	Reason Reason
	Err    error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "mandate: " + string(e.Reason)
	}
	return "mandate: " + string(e.Reason) + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the Reason carried by err, or "" when err is nil or not
// an *Error. Callers that must fail closed treat "" on a non-nil error as
// ReasonMalformed.
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

func errorf(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Err: fmt.Errorf(format, args...)}
}
