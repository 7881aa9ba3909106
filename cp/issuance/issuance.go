// Package issuance is the policy that says who may ask mandate-cp for which
// mandates: an orchestrator for its agents, for certain intents, within a
// scope ceiling, up to a maximum TTL. It is default-deny: a request no rule
// admits is refused.
//
// The policy is one YAML document:
//
//	apiVersion: mandate.dev/v1
//	kind: IssuancePolicy
//	rules:
//	  - name: orchestrator-issues-for-agents
//	    callers: ["spiffe://example.org/orchestrator"]   # SPIFFE ID patterns of who asks
//	    subjects: ["spiffe://example.org/agent/*"]       # SPIFFE ID patterns of who receives
//	    intents: ["triage-tickets", "summarize"]         # exact intents, or "*"
//	    maxTTL: 10m
//	    scope:                                           # ceiling: the requested scope must be Within it
//	      destinations: ["spiffe://example.org/svc/tickets"]
//	      methods: [GET, POST]
//	      paths: ["/tickets/**"]
//	      mcp: {methods: [initialize, tools/list, tools/call], tools: ["github.list_*"]}   # optional MCP ceiling
//
// Unknown fields and duplicate keys are errors.
package issuance

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/internal/yamldoc"
	"github.com/mandate-dev/mandate/policies/pattern"
)

// Limits on a policy document, which is configuration but still parsed
// defensively.
const (
	MaxDocumentBytes = 1 << 20
	MaxRules         = 1024
	maxListLen       = 256
	maxNameLen       = 128
)

// Reasons a request is refused, stable for logs and error messages.
const (
	ReasonNoRule     = "issuance_no_rule"
	ReasonBadRequest = "issuance_bad_request"
)

// Scope is the YAML form of a mandate scope.
type Scope struct {
	Destinations []string `json:"destinations,omitempty"`
	Hosts        []string `json:"hosts,omitempty"`
	Methods      []string `json:"methods,omitempty"`
	Paths        []string `json:"paths,omitempty"`
	GRPC         []string `json:"grpc,omitempty"`
	// MCP caps MCP methods, tool and resource globs (mandate.MCPScope).
	MCP *mandate.MCPScope `json:"mcp,omitempty"`
}

// Mandate converts s to a mandate.Scope.
func (s Scope) Mandate() mandate.Scope {
	return mandate.Scope{Destinations: s.Destinations, Hosts: s.Hosts, Methods: s.Methods, Paths: s.Paths, GRPC: s.GRPC, MCP: s.MCP}
}

// Rule is one issuance rule as written.
type Rule struct {
	Name     string   `json:"name"`
	Callers  []string `json:"callers"`
	Subjects []string `json:"subjects"`
	Intents  []string `json:"intents"`
	// MaxTTL is a Go duration ("15m").
	MaxTTL string `json:"maxTTL"`
	Scope  Scope  `json:"scope"`
}

type document struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name,omitempty"`
	} `json:"metadata,omitempty"`
	Rules []Rule `json:"rules"`
}

type rule struct {
	name     string
	callers  []pattern.Pattern
	subjects []pattern.Pattern
	intents  []string // "*" = any
	maxTTL   time.Duration
	ceiling  mandate.Scope
}

// Policy is a parsed, validated issuance policy. It is immutable.
type Policy struct {
	name  string
	rules []rule
}

// Request is what a caller asks for.
type Request struct {
	// Caller is the SPIFFE ID of who asks.
	Caller  string
	Subject string
	Intent  string
	Scope   mandate.Scope
	// TTL is the requested lifetime; zero asks for the rule's maximum.
	TTL time.Duration
}

// Grant is the outcome of an admitted request.
type Grant struct {
	// Rule names the rule that admitted the request.
	Rule string
	// TTL is the lifetime to issue: the requested one capped by the rule.
	TTL time.Duration
}

// Error is a refusal with a stable reason code.
type Error struct {
	Reason string
	Msg    string
}

func (e *Error) Error() string { return "issuance: " + e.Reason + ": " + e.Msg }

// Parse reads and validates an issuance policy document.
func Parse(name string, data []byte) (*Policy, error) {
	if len(data) > MaxDocumentBytes {
		return nil, fmt.Errorf("issuance: %s: document is %d bytes, limit %d", name, len(data), MaxDocumentBytes)
	}
	var doc document
	if err := yaml.UnmarshalStrict(data, &doc); err != nil {
		return nil, fmt.Errorf("issuance: %w", yamldoc.Located(name, data, err))
	}
	if doc.APIVersion != "mandate.dev/v1" {
		return nil, fmt.Errorf("issuance: %s: apiVersion must be \"mandate.dev/v1\", got %q", name, doc.APIVersion)
	}
	if doc.Kind != "IssuancePolicy" {
		return nil, fmt.Errorf("issuance: %s: kind must be \"IssuancePolicy\", got %q", name, doc.Kind)
	}
	if len(doc.Rules) > MaxRules {
		return nil, fmt.Errorf("issuance: %s: %d rules, limit %d", name, len(doc.Rules), MaxRules)
	}
	p := &Policy{name: name}
	seen := map[string]bool{}
	for i, r := range doc.Rules {
		cr, err := compileRule(r)
		if err != nil {
			return nil, fmt.Errorf("issuance: %s: rule %d (%q): %w", name, i+1, r.Name, err)
		}
		if seen[cr.name] {
			return nil, fmt.Errorf("issuance: %s: rule name %q used twice", name, cr.name)
		}
		seen[cr.name] = true
		p.rules = append(p.rules, cr)
	}
	return p, nil
}

func compileRule(r Rule) (rule, error) {
	out := rule{name: r.Name}
	if r.Name == "" || len(r.Name) > maxNameLen {
		return out, fmt.Errorf("name must be 1..%d bytes", maxNameLen)
	}
	var err error
	if out.callers, err = compileIDs("callers", r.Callers); err != nil {
		return out, err
	}
	if out.subjects, err = compileIDs("subjects", r.Subjects); err != nil {
		return out, err
	}
	if len(r.Intents) == 0 || len(r.Intents) > maxListLen {
		return out, fmt.Errorf("intents: need 1..%d entries (\"*\" for any)", maxListLen)
	}
	for _, in := range r.Intents {
		if in == "*" {
			continue
		}
		if err := checkLabel(in); err != nil {
			return out, fmt.Errorf("intents: %w", err)
		}
	}
	out.intents = slices.Clone(r.Intents)
	if r.MaxTTL == "" {
		return out, errors.New("maxTTL is required")
	}
	if out.maxTTL, err = time.ParseDuration(r.MaxTTL); err != nil {
		return out, fmt.Errorf("maxTTL: %w", err)
	}
	if out.maxTTL < time.Second {
		return out, fmt.Errorf("maxTTL %v under one second", out.maxTTL)
	}
	out.ceiling = r.Scope.Mandate()
	// A ceiling must itself be a valid scope: Within compiles both sides.
	if err := out.ceiling.Within(out.ceiling); err != nil {
		return out, fmt.Errorf("scope: %w", err)
	}
	return out, nil
}

func compileIDs(field string, in []string) ([]pattern.Pattern, error) {
	if len(in) == 0 || len(in) > maxListLen {
		return nil, fmt.Errorf("%s: need 1..%d SPIFFE ID patterns", field, maxListLen)
	}
	out := make([]pattern.Pattern, 0, len(in))
	for _, s := range in {
		if !strings.HasPrefix(s, "spiffe://") {
			return nil, fmt.Errorf("%s: %q is not a SPIFFE ID pattern", field, s)
		}
		p, err := pattern.Compile(s)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// checkLabel accepts what a mandate accepts for task and intent: 1..128 of
// [A-Za-z0-9._:/@-].
func checkLabel(s string) error {
	if s == "" || len(s) > maxNameLen {
		return fmt.Errorf("%q must be 1..%d bytes", s, maxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == ':' || c == '/' || c == '@' || c == '-'
		if !ok {
			return fmt.Errorf("%q: byte %q not allowed", s, c)
		}
	}
	return nil
}

// Name returns the name the policy was parsed under.
func (p *Policy) Name() string { return p.name }

// Rules returns the number of rules.
func (p *Policy) Rules() int { return len(p.rules) }

// Authorize returns the grant of the first rule that admits req, or an
// *Error. A nil policy admits nothing.
func (p *Policy) Authorize(req Request) (Grant, error) {
	if req.TTL < 0 {
		return Grant{}, &Error{Reason: ReasonBadRequest, Msg: fmt.Sprintf("negative ttl %v", req.TTL)}
	}
	if p == nil || len(p.rules) == 0 {
		return Grant{}, &Error{Reason: ReasonNoRule, Msg: "no issuance policy rules are configured"}
	}
	var why []string
	for i := range p.rules {
		r := &p.rules[i]
		if !anyMatch(r.callers, req.Caller) {
			continue
		}
		if !anyMatch(r.subjects, req.Subject) {
			why = append(why, fmt.Sprintf("rule %s: subject not allowed", r.name))
			continue
		}
		if !slices.Contains(r.intents, "*") && !slices.Contains(r.intents, req.Intent) {
			why = append(why, fmt.Sprintf("rule %s: intent not allowed", r.name))
			continue
		}
		if err := req.Scope.Within(r.ceiling); err != nil {
			why = append(why, fmt.Sprintf("rule %s: scope: %v", r.name, err))
			continue
		}
		ttl := req.TTL
		if ttl == 0 || ttl > r.maxTTL {
			ttl = r.maxTTL
		}
		return Grant{Rule: r.name, TTL: ttl}, nil
	}
	if len(why) == 0 {
		return Grant{}, &Error{Reason: ReasonNoRule, Msg: fmt.Sprintf("caller %q may not request mandates", req.Caller)}
	}
	return Grant{}, &Error{Reason: ReasonNoRule, Msg: strings.Join(why, "; ")}
}

// MayIssueFor reports whether some rule lets caller issue mandates for
// subject (any intent or scope): used to let orchestrators complete the
// tasks of their agents.
func (p *Policy) MayIssueFor(caller, subject string) bool {
	if p == nil {
		return false
	}
	for i := range p.rules {
		if anyMatch(p.rules[i].callers, caller) && anyMatch(p.rules[i].subjects, subject) {
			return true
		}
	}
	return false
}

func anyMatch(ps []pattern.Pattern, s string) bool {
	for _, p := range ps {
		if p.Match(s) {
			return true
		}
	}
	return false
}
