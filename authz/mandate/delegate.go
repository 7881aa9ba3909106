package mandate

import (
	"errors"
	"time"
)

// Delegate derives the claims of a child mandate from a verified parent, for
// the parent's holder handing part of its mandate to another agent. The
// child:
//
//   - is issued to to (a SPIFFE ID) for the same task and audience;
//   - carries the same intent: intent must equal parent.Intent (no
//     narrowing or renaming of intents through delegation);
//   - has a scope Within the parent's;
//   - lives ttl from now, cut back to the parent's expiry if that comes
//     first (a child never outlives its parent);
//   - has chain = parent.Chain + {parent.ID, parent.Subject} and depth
//     parent.Depth+1, which must not exceed maxDepth.
//
// The result has no ID and no issuer: Signer.Sign fills both. Errors carry
// ReasonOutOfScope (intent or scope), ReasonBadChain (depth), ReasonExpired
// (parent expired) or ReasonBadClaims.
func Delegate(parent *Claims, to string, scope Scope, ttl time.Duration, intent string, maxDepth int, now time.Time) (*Claims, error) {
	if parent == nil {
		return nil, &Error{Reason: ReasonBadClaims, Err: errors.New("delegate: nil parent")}
	}
	if err := parent.Validate(); err != nil {
		return nil, err
	}
	if err := checkSPIFFEID("delegate to", to); err != nil {
		return nil, err
	}
	if intent != parent.Intent {
		return nil, errorf(ReasonOutOfScope, "delegate: intent %q differs from the parent's %q", intent, parent.Intent)
	}
	if maxDepth < 1 || maxDepth > MaxChainDepth {
		return nil, errorf(ReasonBadChain, "delegate: max depth %d outside [1, %d]", maxDepth, MaxChainDepth)
	}
	if parent.Depth+1 > maxDepth {
		return nil, errorf(ReasonBadChain, "delegate: depth %d would exceed the limit %d", parent.Depth+1, maxDepth)
	}
	if ttl < time.Second {
		return nil, errorf(ReasonBadClaims, "delegate: ttl %v under one second", ttl)
	}
	if err := scope.Within(parent.Scope); err != nil {
		return nil, err
	}
	iat := now.Unix()
	exp := now.Add(ttl).Unix()
	if exp > parent.Expiry {
		exp = parent.Expiry
	}
	if exp <= iat {
		return nil, errorf(ReasonExpired, "delegate: parent expires at %v", parent.ExpiryTime().UTC())
	}
	chain := make([]Link, 0, len(parent.Chain)+1)
	chain = append(chain, parent.Chain...)
	chain = append(chain, Link{ID: parent.ID, Subject: parent.Subject})
	child := &Claims{
		Subject:   to,
		Audience:  parent.Audience,
		IssuedAt:  iat,
		NotBefore: iat,
		Expiry:    exp,
		Task:      parent.Task,
		Intent:    parent.Intent,
		Scope:     scope.Clone(),
		Chain:     chain,
		Depth:     len(chain),
	}
	return child, nil
}

func cloneStrings(s []string) []string {
	if s == nil {
		return nil
	}
	return append([]string(nil), s...)
}
