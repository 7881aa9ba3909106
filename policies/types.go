package policies

// APIVersion is the apiVersion every policy document carries.
const APIVersion = "mandate.dev/v1"

// KindPolicy is the kind of a policy document.
const KindPolicy = "Policy"

// Mode says whether a policy's rules decide requests or only report.
type Mode string

// Policy modes.
const (
	// ModeEnforce rules decide requests (the default when mode is empty).
	ModeEnforce Mode = "enforce"
	// ModeDryRun rules are evaluated and reported in Decision.DryRun but
	// never change a decision.
	ModeDryRun Mode = "dry_run"
)

// Policy is one `kind: Policy` document. A Policy must not be modified
// after it has been passed to Compile.
type Policy struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	Spec       Spec     `yaml:"spec" json:"spec"`

	// SourceFile is the file the policy was read from ("" when built in
	// code). It only labels error messages.
	SourceFile string `yaml:"-" json:"-"`
	// Source holds the exact bytes of the YAML document the policy was
	// parsed from, for the control plane to ship and for Set.Version.
	Source []byte `yaml:"-" json:"-"`
}

// Metadata names a policy.
type Metadata struct {
	// Name is unique across a Set, DNS-label-like.
	Name        string `yaml:"name" json:"name"`
	Description string `yaml:"description,omitempty" json:"description,omitempty"`
}

// Spec holds a policy's mode and rules.
type Spec struct {
	Mode  Mode   `yaml:"mode,omitempty" json:"mode,omitempty"`
	Rules []Rule `yaml:"rules" json:"rules"`
}

// Rule grants, refuses or escalates a set of requests. Every non-empty
// matcher must match for the rule to match.
type Rule struct {
	// Name is unique within the policy.
	Name string `yaml:"name" json:"name"`
	// Effect is "allow", "deny" or "step_up".
	Effect string `yaml:"effect" json:"effect"`
	// Subjects are SPIFFE ID patterns of callers (required).
	Subjects []string `yaml:"subjects" json:"subjects"`
	// Destinations are SPIFFE ID patterns of the destination principal;
	// empty matches any destination.
	Destinations []string `yaml:"destinations,omitempty" json:"destinations,omitempty"`
	// Hosts are exact hosts or "*.suffix"; empty matches any host.
	Hosts []string `yaml:"hosts,omitempty" json:"hosts,omitempty"`
	// Intents the request must declare one of; empty matches any request,
	// including one without intent.
	Intents []string `yaml:"intents,omitempty" json:"intents,omitempty"`
	// RequireMandate makes the rule match only requests carrying a
	// verified mandate.
	RequireMandate bool `yaml:"requireMandate,omitempty" json:"requireMandate,omitempty"`
	// Actions the request must match one of; empty matches any action.
	Actions []Action `yaml:"actions,omitempty" json:"actions,omitempty"`
	// Labels are route context_extensions that must equal these values.
	Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	// When is an optional CEL condition returning bool.
	When string `yaml:"when,omitempty" json:"when,omitempty"`
}

// Action is an HTTP action (Methods and/or Paths), a gRPC action (GRPC)
// or an MCP action (MCP), one kind only.
type Action struct {
	// Methods are upper-case HTTP methods; empty matches any method.
	Methods []string `yaml:"methods,omitempty" json:"methods,omitempty"`
	// Paths are pattern globs over the normalized path; empty matches any.
	Paths []string `yaml:"paths,omitempty" json:"paths,omitempty"`
	// GRPC entries are "pkg.Service/Method" or "pkg.Service/*".
	GRPC []string `yaml:"grpc,omitempty" json:"grpc,omitempty"`
	// MCP matches Model Context Protocol requests.
	MCP *MCPAction `yaml:"mcp,omitempty" json:"mcp,omitempty"`
}

// MCPAction matches MCP JSON-RPC requests (on routes labelled
// protocol: mcp). Every list it sets must match; it needs at least one.
type MCPAction struct {
	// Methods are JSON-RPC methods ("tools/call", "resources/read",
	// "prompts/get", ...); empty matches any method.
	Methods []string `yaml:"methods,omitempty" json:"methods,omitempty"`
	// Tools are tool-name globs ("github.*", "github.list_*"), for
	// tools/call requests only.
	Tools []string `yaml:"tools,omitempty" json:"tools,omitempty"`
	// Resources are resource URI globs ("file:///repo/**"), for
	// resources/read, resources/subscribe and resources/unsubscribe.
	Resources []string `yaml:"resources,omitempty" json:"resources,omitempty"`
}

// ParseEffect maps a YAML effect name to an Effect.
func ParseEffect(s string) (Effect, bool) {
	switch s {
	case "allow":
		return EffectAllow, true
	case "deny":
		return EffectDeny, true
	case "step_up":
		return EffectStepUp, true
	}
	return EffectDeny, false
}
