package policies

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/mandate-dev/mandate/internal/yamldoc"
	"github.com/mandate-dev/mandate/policies/pattern"
)

// ValidationError locates a problem in a policy: the file, the policy, the
// rule and the field it concerns (each omitted when unknown).
type ValidationError struct {
	File   string
	Policy string
	Rule   string
	Field  string
	Err    error
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		// A YAML error starts with its LINE:COL: "f.yaml:9:13: ...".
		if _, positioned := e.Err.(*yamldoc.Error); positioned {
			b.WriteString(":")
		} else {
			b.WriteString(": ")
		}
	}
	if e.Policy != "" {
		fmt.Fprintf(&b, "policy %q: ", e.Policy)
	}
	if e.Rule != "" {
		fmt.Fprintf(&b, "rule %q: ", e.Rule)
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *ValidationError) Unwrap() error { return e.Err }

// maxErrors caps how many problems one Parse or Compile reports.
const maxErrors = 50

// errList collects validation errors.
type errList struct {
	errs []error
}

func (l *errList) add(file, policy, rule, field string, err error) {
	if len(l.errs) < maxErrors {
		l.errs = append(l.errs, &ValidationError{File: file, Policy: policy, Rule: rule, Field: field, Err: err})
	}
}

func (l *errList) err() error { return errors.Join(l.errs...) }

var (
	nameRe    = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	methodRe  = regexp.MustCompile(`^[A-Z][A-Z0-9_-]{0,31}$`)
	intentRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$`)
	tdRe      = regexp.MustCompile(`^[a-z0-9._-]{1,255}$`)
	idSegRe   = regexp.MustCompile(`^[A-Za-z0-9._*-]+$`)
	hostRe    = regexp.MustCompile(`^(\*\.)?[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$`)
	serviceRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)
	rpcRe     = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_]*|\*)$`)
)

// maxIDLength is the longest SPIFFE ID (and ID pattern) accepted.
const maxIDLength = 2048

// compileIDPattern validates and compiles a SPIFFE ID pattern: a
// spiffe:// URI with a literal, lowercase trust domain and path segments
// made of SPIFFE characters and '*' wildcards.
func compileIDPattern(s string) (pattern.Pattern, error) {
	if len(s) > maxIDLength {
		return pattern.Pattern{}, fmt.Errorf("pattern of %d bytes exceeds %d", len(s), maxIDLength)
	}
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return pattern.Pattern{}, fmt.Errorf("pattern %q: must start with spiffe://", s)
	}
	td, path, hasPath := strings.Cut(rest, "/")
	if !tdRe.MatchString(td) {
		return pattern.Pattern{}, fmt.Errorf("pattern %q: trust domain %q must be 1-255 characters of [a-z0-9._-] (no wildcards, no port)", s, td)
	}
	if hasPath {
		for _, seg := range strings.Split(path, "/") {
			switch {
			case seg == "":
				return pattern.Pattern{}, fmt.Errorf("pattern %q: empty path segment", s)
			case seg == "." || seg == "..":
				return pattern.Pattern{}, fmt.Errorf("pattern %q: path segment %q is not allowed", s, seg)
			case !idSegRe.MatchString(seg):
				return pattern.Pattern{}, fmt.Errorf("pattern %q: path segment %q must be [A-Za-z0-9._-] or wildcards", s, seg)
			}
		}
	}
	p, err := pattern.Compile(s)
	if err != nil {
		return pattern.Pattern{}, err
	}
	return p, nil
}

// compilePathPattern validates and compiles an HTTP path pattern.
func compilePathPattern(s string) (pattern.Pattern, error) {
	if !strings.HasPrefix(s, "/") {
		return pattern.Pattern{}, fmt.Errorf("pattern %q: must start with '/'", s)
	}
	if len(s) > maxIDLength {
		return pattern.Pattern{}, fmt.Errorf("pattern of %d bytes exceeds %d", len(s), maxIDLength)
	}
	return pattern.Compile(s)
}

// staticRule is everything of a rule except its condition.
type staticRule struct {
	effect         Effect
	subjects       []pattern.Pattern
	dests          []pattern.Pattern
	hosts          []string // exact hosts
	hostSuffixes   []string // ".suffix" of "*.suffix" entries
	intents        []string
	requireMandate bool
	actions        []action
	labels         []label
}

type action struct {
	grpc    bool
	methods []string
	paths   []pattern.Pattern
	// folded are paths compiled lowercased, for routes labelled
	// LabelPathCase=insensitive.
	folded []pattern.Pattern
	rpcs   []rpc
	mcp    *mcpAction
}

// mcpAction is a compiled MCPAction.
type mcpAction struct {
	methods   []string
	tools     []pattern.Pattern
	resources []pattern.Pattern
}

type rpc struct {
	service string
	method  string // "*" = any
}

type label struct{ key, value string }

// checkPolicy validates everything of one policy that does not need the
// CEL environment or the other policies, and compiles its rules.
func checkPolicy(p *Policy, errs *errList) []staticRule {
	file, pname := p.SourceFile, p.Metadata.Name
	add := func(rule, field string, err error) { errs.add(file, pname, rule, field, err) }
	if p.APIVersion != APIVersion {
		add("", "apiVersion", fmt.Errorf("must be %q, got %q", APIVersion, p.APIVersion))
	}
	if p.Kind != KindPolicy {
		add("", "kind", fmt.Errorf("must be %q, got %q", KindPolicy, p.Kind))
	}
	if !nameRe.MatchString(pname) {
		add("", "metadata.name", fmt.Errorf("%q must be a DNS label: 1-63 characters of [a-z0-9-], starting and ending alphanumeric", pname))
	}
	switch p.Spec.Mode {
	case "", ModeEnforce, ModeDryRun:
	default:
		add("", "spec.mode", fmt.Errorf("must be %q or %q, got %q", ModeEnforce, ModeDryRun, p.Spec.Mode))
	}
	if len(p.Spec.Rules) == 0 {
		add("", "spec.rules", errors.New("a policy needs at least one rule"))
	}
	seen := map[string]bool{}
	out := make([]staticRule, len(p.Spec.Rules))
	for i := range p.Spec.Rules {
		ru := &p.Spec.Rules[i]
		rname := ru.Name
		if rname == "" {
			rname = fmt.Sprintf("#%d", i)
		}
		radd := func(field string, err error) { add(rname, field, err) }
		switch {
		case !nameRe.MatchString(ru.Name):
			radd("name", fmt.Errorf("%q must be a DNS label: 1-63 characters of [a-z0-9-], starting and ending alphanumeric", ru.Name))
		case seen[ru.Name]:
			radd("name", errors.New("duplicate rule name in this policy"))
		}
		seen[ru.Name] = true
		out[i] = checkRule(ru, radd)
	}
	return out
}

func checkRule(ru *Rule, add func(field string, err error)) staticRule {
	var sr staticRule
	eff, ok := ParseEffect(ru.Effect)
	if !ok {
		add("effect", fmt.Errorf("must be allow, deny or step_up, got %q", ru.Effect))
	}
	sr.effect = eff
	if len(ru.Subjects) == 0 {
		add("subjects", errors.New("at least one SPIFFE ID pattern is required"))
	}
	for i, s := range ru.Subjects {
		p, err := compileIDPattern(s)
		if err != nil {
			add(fmt.Sprintf("subjects[%d]", i), err)
			continue
		}
		sr.subjects = append(sr.subjects, p)
	}
	for i, s := range ru.Destinations {
		p, err := compileIDPattern(s)
		if err != nil {
			add(fmt.Sprintf("destinations[%d]", i), err)
			continue
		}
		sr.dests = append(sr.dests, p)
	}
	for i, h := range ru.Hosts {
		if len(h) > 253 || !hostRe.MatchString(h) {
			add(fmt.Sprintf("hosts[%d]", i), fmt.Errorf("%q must be a lowercase host name without port, optionally starting with \"*.\"", h))
			continue
		}
		if suffix, ok := strings.CutPrefix(h, "*"); ok {
			sr.hostSuffixes = append(sr.hostSuffixes, suffix)
		} else {
			sr.hosts = append(sr.hosts, h)
		}
	}
	for i, in := range ru.Intents {
		if !intentRe.MatchString(in) {
			add(fmt.Sprintf("intents[%d]", i), fmt.Errorf("%q must be 1-128 characters of [A-Za-z0-9._:/-]", in))
			continue
		}
		sr.intents = append(sr.intents, in)
	}
	sr.requireMandate = ru.RequireMandate
	for i, a := range ru.Actions {
		field := fmt.Sprintf("actions[%d]", i)
		var ca action
		isHTTP := len(a.Methods) > 0 || len(a.Paths) > 0
		kinds := 0
		for _, k := range []bool{isHTTP, len(a.GRPC) > 0, a.MCP != nil} {
			if k {
				kinds++
			}
		}
		switch {
		case kinds > 1:
			add(field, errors.New("an action is HTTP (methods, paths), gRPC (grpc) or MCP (mcp), one only"))
			continue
		case kinds == 0:
			add(field, errors.New("an action needs methods, paths, grpc or mcp"))
			continue
		case a.MCP != nil:
			ca.mcp = checkMCPAction(a.MCP, field+".mcp", add)
			sr.actions = append(sr.actions, ca)
			continue
		}
		for j, m := range a.Methods {
			if !methodRe.MatchString(m) {
				add(fmt.Sprintf("%s.methods[%d]", field, j), fmt.Errorf("%q must be an upper-case token like GET", m))
				continue
			}
			ca.methods = append(ca.methods, m)
		}
		for j, ps := range a.Paths {
			p, err := compilePathPattern(ps)
			if err != nil {
				add(fmt.Sprintf("%s.paths[%d]", field, j), err)
				continue
			}
			ca.paths = append(ca.paths, p)
			if fp, err := compilePathPattern(strings.ToLower(ps)); err == nil {
				ca.folded = append(ca.folded, fp)
			} else {
				add(fmt.Sprintf("%s.paths[%d]", field, j), fmt.Errorf("lowercased: %w", err))
			}
		}
		for j, g := range a.GRPC {
			svc, method, ok := strings.Cut(g, "/")
			if !ok || !serviceRe.MatchString(svc) || !rpcRe.MatchString(method) {
				add(fmt.Sprintf("%s.grpc[%d]", field, j), fmt.Errorf("%q must be pkg.Service/Method or pkg.Service/*", g))
				continue
			}
			ca.grpc = true
			ca.rpcs = append(ca.rpcs, rpc{service: svc, method: method})
		}
		sr.actions = append(sr.actions, ca)
	}
	for k, v := range ru.Labels {
		if k == "" {
			add("labels", errors.New("empty label key"))
			continue
		}
		sr.labels = append(sr.labels, label{k, v})
	}
	return sr
}

var (
	mcpMethodRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_./-]{0,127}$`)
	toolGlobRe  = regexp.MustCompile(`^[A-Za-z0-9_.:/*-]{1,128}$`)
)

// mcpResourceMethods are the methods whose params.uri resource globs match.
var mcpResourceMethods = []string{"resources/read", "resources/subscribe", "resources/unsubscribe"}

// checkMCPAction validates and compiles an MCP action. Tool globs apply to
// tools/call and resource globs to the resources/ methods naming a URI, so
// listing them with other methods is refused (the rule could never match
// those).
func checkMCPAction(a *MCPAction, field string, add func(string, error)) *mcpAction {
	out := &mcpAction{}
	if len(a.Methods) == 0 && len(a.Tools) == 0 && len(a.Resources) == 0 {
		add(field, errors.New("needs methods, tools or resources"))
	}
	if len(a.Tools) > 0 && len(a.Resources) > 0 {
		add(field, errors.New("tools (tools/call) and resources (resources/*) never match the same request: use two actions"))
	}
	for j, m := range a.Methods {
		switch {
		case !mcpMethodRe.MatchString(m):
			add(fmt.Sprintf("%s.methods[%d]", field, j), fmt.Errorf("%q must be a JSON-RPC method like tools/call", m))
			continue
		case len(a.Tools) > 0 && m != "tools/call":
			add(fmt.Sprintf("%s.methods[%d]", field, j), fmt.Errorf("%q: tools match tools/call only", m))
		case len(a.Resources) > 0 && !containsString(mcpResourceMethods, m):
			add(fmt.Sprintf("%s.methods[%d]", field, j), fmt.Errorf("%q: resources match %s only", m, strings.Join(mcpResourceMethods, ", ")))
		}
		out.methods = append(out.methods, m)
	}
	for j, g := range a.Tools {
		if !toolGlobRe.MatchString(g) {
			add(fmt.Sprintf("%s.tools[%d]", field, j), fmt.Errorf("%q must be 1-128 characters of [A-Za-z0-9_.:/-] and '*'", g))
			continue
		}
		p, err := pattern.Compile(g)
		if err != nil {
			add(fmt.Sprintf("%s.tools[%d]", field, j), err)
			continue
		}
		out.tools = append(out.tools, p)
	}
	for j, u := range a.Resources {
		if len(u) > maxIDLength || strings.ContainsAny(u, " \t\n\r\\") {
			add(fmt.Sprintf("%s.resources[%d]", field, j), fmt.Errorf("%q must be a URI glob of at most %d bytes without spaces or backslashes", u, maxIDLength))
			continue
		}
		p, err := pattern.Compile(u)
		if err != nil {
			add(fmt.Sprintf("%s.resources[%d]", field, j), err)
			continue
		}
		out.resources = append(out.resources, p)
	}
	return out
}
