package policies

import "time"

// Effect is the outcome of a rule or a decision. The zero value is deny, so
// a Decision that was never filled in fails closed.
type Effect uint8

const (
	// EffectDeny refuses the request.
	EffectDeny Effect = iota
	// EffectAllow lets the request through.
	EffectAllow
	// EffectStepUp refuses the request until a person approves it.
	EffectStepUp
)

// String returns the effect's name as written in policy YAML.
func (e Effect) String() string {
	switch e {
	case EffectAllow:
		return "allow"
	case EffectStepUp:
		return "step_up"
	default:
		return "deny"
	}
}

// Request holds every attribute a decision may read. The authz package
// builds it from a validated CheckRequest; nothing in it is trusted more
// than its comment says.
type Request struct {
	// Subject is the caller's SPIFFE ID, validated (from the mTLS peer).
	Subject string
	// Destination is the destination principal Envoy reported; may be empty.
	Destination string
	// Host is the :authority as authz/attrs.Host normalized it: lowercase,
	// without port or trailing dot. Client-set: never identity.
	Host string
	// Method is the HTTP method, upper-case.
	Method string
	// Path is the normalized request path, without query or fragment
	// (lowercased on routes labelled LabelPathCase=insensitive).
	Path string
	// GRPCService and GRPCMethod are set for gRPC requests
	// (path /pkg.Service/Method with content-type application/grpc).
	GRPCService string
	GRPCMethod  string
	// Intent and Task are the declared intent and task: from a verified
	// mandate when one is presented, else from the x-mandate-intent and
	// x-mandate-task headers. Empty when none was declared.
	Intent string
	Task   string
	// Labels are the route's context_extensions: set by the operator in
	// Envoy's config, trusted.
	Labels map[string]string
	// Headers are the request headers, names lowercased. Client-set.
	Headers map[string]string
	// Mandate is the verified mandate the request carries, nil when none.
	Mandate *Mandate
	// MCP is the MCP request of a route labelled protocol: mcp, parsed
	// and checked strictly (package authz/mcp); nil elsewhere.
	MCP *MCPCall
	// Now is the decision time (conditions may read it as `now`).
	Now time.Time
}

// Route labels (context_extensions) that change how a request's path is
// read. They are operator-set, like every label.
const (
	// LabelPathParameters = "strip": the route's upstream ignores ';'
	// path parameters; Mandate cuts them from each segment instead of
	// refusing the request (path_parameter).
	LabelPathParameters = "mandate.path_parameters"
	// LabelPathCase = "insensitive": the route's upstream matches paths
	// case-insensitively; the path is lowercased and rules compare their
	// path patterns lowercased too.
	LabelPathCase = "mandate.path_case"
)

// Mandate is the part of a verified mandate token that policies can see.
type Mandate struct {
	ID     string
	Issuer string
	Task   string
	Intent string
	// Chain lists the SPIFFE IDs of the delegation chain from the root
	// holder to the current holder (the last element is the subject).
	Chain     []string
	ExpiresAt time.Time
}

// MCPCall is what a decision may read of an MCP JSON-RPC request.
type MCPCall struct {
	// Method is the JSON-RPC method ("tools/call").
	Method string
	// Tool is params.name of a tools/call, else "".
	Tool string
	// ResourceURI is params.uri of resources/read, resources/subscribe
	// and resources/unsubscribe, else "".
	ResourceURI string
	// Arguments is params.arguments of tools/call and prompts/get: a
	// JSON object as validated by authz/mcp ("" when absent). Client-set.
	Arguments string
}

// Decision is the result of evaluating a Set against a Request.
type Decision struct {
	Effect Effect
	// Policy and Rule name the rule that decided; empty when no rule
	// matched (then Effect is EffectDeny and Reason is ReasonNoMatch).
	Policy string
	Rule   string
	Reason Reason
	// DryRun lists what dry_run policies would have decided: the
	// strongest dry-run match (deny > step_up > allow), or nil.
	DryRun *Match
	// Cacheable is false when the decision read something that is not
	// part of the cache key (for example `now` in a condition).
	Cacheable bool
	// AllowedIfApproved is set on a step_up decision when an allow rule
	// matches too: an approval then allows the request. Without it an
	// approval changes nothing (approval never widens the policy).
	AllowedIfApproved bool
	// ArgumentKeys are the MCP argument names the deciding rule's
	// condition reads by constant name (sorted), and AllArguments is set
	// when it reads the arguments in any other way: a step-up approval
	// is bound to those values. Shared: do not modify.
	ArgumentKeys []string
	AllArguments bool
	// HeaderKeys are the request header names (lowercased, sorted) the
	// deciding rule's condition reads by constant name, and AllHeaders is
	// set when it reads headers in any other way: a step-up approval is
	// bound to those values too. Shared: do not modify.
	HeaderKeys []string
	AllHeaders bool
}

// Match names one rule that matched and its effect.
type Match struct {
	Policy string
	Rule   string
	Effect Effect
}

// Reason is a short machine-readable code explaining a decision. It is
// safe to return to clients: it never carries policy internals.
type Reason string

// Reason codes of policy evaluation.
const (
	ReasonAllowed        Reason = "allowed"
	ReasonDeniedByRule   Reason = "denied_by_rule"
	ReasonStepUpRequired Reason = "step_up_required"
	ReasonNoMatch        Reason = "no_matching_rule"
	ReasonConditionError Reason = "condition_error"
	ReasonNoPolicy       Reason = "no_policy"
)
