// Package mandate defines the mandate token: the short-lived, task-scoped
// credential mandate-cp mints (Signer, Delegate) and mandate-authz checks
// (Verifier, Claims.CheckHolder, Scope.Allows).
//
// # Token
//
// A mandate is a JWS in compact serialization (RFC 7515 §7.1), signed with
// Ed25519 (RFC 8037, "alg":"EdDSA"), and travels in the x-mandate header:
//
//	BASE64URL(header) "." BASE64URL(claims) "." BASE64URL(signature)
//
// Base64url is unpadded and canonical; the token holds only [A-Za-z0-9_-]
// and exactly two dots, no whitespace. JSON serialization, several
// signatures, detached payloads and anything over 8 KiB (configurable) are
// refused.
//
// The protected header has exactly these members:
//
//	{"alg":"EdDSA","kid":"<key id>","typ":"mandate+jwt"}
//
// alg must be "EdDSA" (never "none", HMAC, RSA or ECDSA); kid names a
// verification key distributed to replicas as a VerificationKey resource; by
// default it is the key's RFC 7638 JWK thumbprint (SHA-256, base64url, 43
// characters, see KeyID). No other header member (crit, jwk, jku, x5c, ...)
// is accepted.
//
// # Claims
//
// The payload is one JSON object with exactly these members; unknown members
// are refused, since a claim this verifier does not know could be a
// restriction it would silently drop:
//
//	iss     string  issuer, e.g. "spiffe://example.org/mandate/cp"; must equal the verifier's
//	sub     string  SPIFFE ID of the agent the mandate is issued to (the holder)
//	aud     string  audience, e.g. "mandate"; a single string, not an array
//	jti     string  mandate id: 128 random bits, unpadded base64url (22 characters)
//	iat     number  issued at, Unix seconds
//	nbf     number  not before, Unix seconds, iat <= nbf
//	exp     number  expiry, Unix seconds, nbf < exp; exp - iat <= max TTL (default 1h)
//	task    string  task id, 1..128 of [A-Za-z0-9._:/@-]
//	intent  string  declared intent, same alphabet
//	scope   object  what the holder may do, see below
//	chain   array   delegation ancestry, omitted for a root mandate
//	depth   number  len(chain)
//
// Times are checked with a clock skew allowance (default 30 s, at most 2
// min): a mandate is accepted while nbf - skew <= now < exp + skew, and only
// while its signing key is inside the key's NotBefore/NotAfter window.
//
// scope has up to five lists, each of at most 64 entries:
//
//	destinations  SPIFFE ID patterns of the destination workload (policies/pattern globs)
//	hosts         lowercase host names, exact or "*.suffix"
//	methods       HTTP methods, exact ("GET")
//	paths         URL path patterns (policies/pattern globs, leading "/")
//	grpc          "pkg.Service/Method" or "pkg.Service/*"
//
// An absent or empty destinations, hosts or methods list admits any value of
// that dimension. paths and grpc together form the action dimension: a
// request is in scope if its path matches a paths pattern, or it is a gRPC
// call matching a grpc entry; at least one of the two lists must be
// non-empty, and an empty one admits nothing.
//
// # Delegation chain
//
// A mandate delegated from another carries the ancestry in chain, root
// first, ending with its direct parent:
//
//	"chain":[{"jti":"<root id>","sub":"<root holder>"}, ..., {"jti":"<parent id>","sub":"<parent holder>"}]
//
// so the full lineage of ids is chain[*].jti followed by the token's own jti
// (Claims.ChainIDs), and of holders chain[*].sub followed by sub
// (Claims.ChainSubjects). Revoking any id in the lineage revokes the
// mandate. depth equals len(chain); ids in the lineage are distinct; depth
// is capped (verifier default 4, absolute 16). Delegate builds a child:
// same task, audience and intent (intent must be equal: delegation never
// renames or narrows intents), scope within the parent's (pattern by
// pattern, policies/pattern.Covers), expiry no later than the parent's,
// chain = parent.chain + {parent.jti, parent.sub}. The chain is covered by
// the signature of mandate-cp, which checked the parent when it minted the
// child; a verifier trusts the chain as signed and consults revocations for
// every id in it.
//
// # Holder of key
//
// A mandate is valid only when presented over mTLS by its subject: the
// caller checks Claims.CheckHolder with the verified peer SPIFFE ID. A stolen
// token is useless to any other workload.
//
// # Verification cache
//
// Verifier caches successful verifications (exact token match, bounded,
// sharded). A hit still checks nbf/exp and the key's window against the
// clock, and that the key set has not changed since (a generation number);
// it costs a few hundred nanoseconds and no allocations. Claims returned by
// Verify are shared and must not be modified.
//
// # Errors
//
// Every refusal is an *Error whose Reason is a stable code for deny
// responses and logs: mandate_malformed, mandate_bad_signature,
// mandate_unknown_key, mandate_expired, mandate_not_yet_valid,
// mandate_wrong_audience, mandate_wrong_issuer, mandate_bad_alg,
// mandate_too_large, mandate_bad_claims, mandate_wrong_holder,
// mandate_out_of_scope, mandate_bad_chain.
package mandate
