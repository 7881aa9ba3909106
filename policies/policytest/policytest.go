// Package policytest runs policy test suites, like `opa test`: YAML
// documents of kind PolicyTest, kept in *_test.yaml files next to the
// policies, each listing requests and the decision expected for each.
//
//	apiVersion: mandate.dev/v1
//	kind: PolicyTest
//	metadata: {name: support-agent-tests}
//	cases:
//	  - name: support agent reads a ticket of its task
//	    request:
//	      subject: spiffe://example.org/agent/support/a1
//	      destination: spiffe://example.org/svc/tickets
//	      host: tickets.internal
//	      method: GET
//	      path: /tickets/T-1
//	      # grpc: tickets.v1.Tickets/Get   # sets grpcService/grpcMethod,
//	      #                                # path /tickets.v1.Tickets/Get, POST
//	      intent: support.read
//	      task: T-1
//	      headers: {x-ticket-id: T-1}      # names are lowercased, as Envoy does
//	      labels: {resource: tickets}
//	      mandate: {id: m1, issuer: ..., task: T-1, intent: support.read, chain: [...]}
//	      # mcp: an MCP JSON-RPC request (route labelled protocol: mcp,
//	      # POST /mcp unless set): method (default tools/call), tool or
//	      # resource, arguments; or body: the raw JSON-RPC text. Either is
//	      # parsed as strictly as the authorizer does.
//	      # mcp: {tool: github.list_issues, arguments: {owner: acme}}
//	      now: 2026-01-01T12:00:00Z        # default DefaultNow
//	    expect:
//	      effect: allow                    # allow | deny | step_up (required)
//	      policy: support-agent            # optional
//	      rule: read-tickets-for-task      # optional
//	      reason: allowed                  # optional reason code
//	      dryRun: {effect: deny, policy: ..., rule: ...}  # optional; effect none = no dry-run match
//
// Each case is decided as a replica decides it: the request becomes the
// CheckRequest Envoy would send (subject as the mTLS peer, intent and task
// as headers, an MCP request as the body) and goes through the replica's
// own extraction (authz/attrs), so paths, hosts, headers and MCP bodies
// are normalized and refused exactly as in production. A case's mandate
// stands for a verified token: its intent and task bind the request as a
// replica binds them (a declared intent or task that differs is refused
// with intent_mismatch or task_mismatch).
package policytest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mandate-dev/mandate/authz/attrs"
	"github.com/mandate-dev/mandate/authz/headers"
	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/internal/envoyreq"
	"github.com/mandate-dev/mandate/internal/yamldoc"
	"github.com/mandate-dev/mandate/policies"
)

// KindPolicyTest is the kind of a policy test document.
const KindPolicyTest = "PolicyTest"

// DefaultNow is the decision time of cases that do not set request.now.
var DefaultNow = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Suite is one PolicyTest document.
type Suite struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Metadata   Metadata `yaml:"metadata"`
	Cases      []Case   `yaml:"cases"`
	// File is the file the suite was read from.
	File string `yaml:"-"`
}

// Metadata names a suite.
type Metadata struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description,omitempty"`
}

// Case is one request and the decision expected for it.
type Case struct {
	Name    string  `yaml:"name"`
	Request Request `yaml:"request"`
	Expect  Expect  `yaml:"expect"`
}

// Request is a case's request, as policies.Request in YAML.
type Request struct {
	Subject     string            `yaml:"subject"`
	Destination string            `yaml:"destination,omitempty"`
	Host        string            `yaml:"host,omitempty"`
	Method      string            `yaml:"method,omitempty"`
	Path        string            `yaml:"path,omitempty"`
	GRPC        string            `yaml:"grpc,omitempty"`
	GRPCService string            `yaml:"grpcService,omitempty"`
	GRPCMethod  string            `yaml:"grpcMethod,omitempty"`
	Intent      string            `yaml:"intent,omitempty"`
	Task        string            `yaml:"task,omitempty"`
	Headers     map[string]string `yaml:"headers,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Mandate     *Mandate          `yaml:"mandate,omitempty"`
	MCP         *MCP              `yaml:"mcp,omitempty"`
	Now         *time.Time        `yaml:"now,omitempty"`
}

// MCP is a case's MCP request.
type MCP struct {
	Method    string         `yaml:"method,omitempty"`
	Tool      string         `yaml:"tool,omitempty"`
	Resource  string         `yaml:"resource,omitempty"`
	Arguments map[string]any `yaml:"arguments,omitempty"`
	Body      string         `yaml:"body,omitempty"`
}

// Parse returns the JSON-RPC request the case describes, parsed by
// authz/mcp.
func (m *MCP) Parse() (mcp.Request, error) {
	body, err := m.body()
	if err != nil {
		return mcp.Request{}, err
	}
	return mcp.Parse(body, mcp.Limits{})
}

// body returns the JSON-RPC text of the case's request.
func (m *MCP) body() (string, error) {
	body := m.Body
	if body == "" {
		method := m.Method
		if method == "" {
			method = mcp.MethodToolsCall
		}
		params := map[string]any{}
		if m.Tool != "" {
			params["name"] = m.Tool
		}
		if m.Resource != "" {
			params["uri"] = m.Resource
		}
		if m.Arguments != nil {
			params["arguments"] = m.Arguments
		}
		msg := map[string]any{"jsonrpc": "2.0", "method": method, "params": params}
		if !strings.HasPrefix(method, "notifications/") {
			msg["id"] = 1
		}
		b, err := json.Marshal(msg)
		if err != nil {
			return "", err
		}
		body = string(b)
	} else if m.Method != "" || m.Tool != "" || m.Resource != "" || m.Arguments != nil {
		return "", errors.New("set body or method/tool/resource/arguments, not both")
	}
	return body, nil
}

// Mandate is a case's verified mandate.
type Mandate struct {
	ID     string   `yaml:"id"`
	Issuer string   `yaml:"issuer,omitempty"`
	Task   string   `yaml:"task,omitempty"`
	Intent string   `yaml:"intent,omitempty"`
	Chain  []string `yaml:"chain,omitempty"`
}

// Expect is the expected decision. Empty optional fields are not checked.
type Expect struct {
	Effect string       `yaml:"effect"`
	Policy string       `yaml:"policy,omitempty"`
	Rule   string       `yaml:"rule,omitempty"`
	Reason string       `yaml:"reason,omitempty"`
	DryRun *ExpectMatch `yaml:"dryRun,omitempty"`
}

// ExpectMatch is an expected dry-run match; Effect "none" expects none.
type ExpectMatch struct {
	Effect string `yaml:"effect"`
	Policy string `yaml:"policy,omitempty"`
	Rule   string `yaml:"rule,omitempty"`
}

// Error locates a problem in a test file.
type Error struct {
	File  string
	Suite string
	Case  string
	Field string
	Err   error
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		// A YAML error starts with its LINE:COL: "f.yaml:9:13: ...".
		if _, positioned := e.Err.(*yamldoc.Error); positioned {
			b.WriteString(e.File + ":")
		} else {
			b.WriteString(e.File + ": ")
		}
	}
	if e.Suite != "" {
		fmt.Fprintf(&b, "suite %q: ", e.Suite)
	}
	if e.Case != "" {
		fmt.Fprintf(&b, "case %q: ", e.Case)
	}
	if e.Field != "" {
		b.WriteString(e.Field + ": ")
	}
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// LoadDir loads every test file (policies.TestFiles) under dir.
func LoadDir(dir string) ([]*Suite, error) {
	files, err := policies.TestFiles(dir)
	if err != nil {
		return nil, err
	}
	var (
		out  []*Suite
		errs []error
	)
	for _, f := range files {
		ss, err := LoadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, ss...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// LoadFile loads the suites of one test file.
func LoadFile(path string) ([]*Suite, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("policytest: %w", err)
	}
	if st.Size() > yamldoc.MaxSize {
		return nil, fmt.Errorf("policytest: %s: %d bytes exceeds the %d byte limit", path, st.Size(), yamldoc.MaxSize)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policytest: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and validates the PolicyTest documents of a YAML stream.
func Parse(filename string, data []byte) ([]*Suite, error) {
	docs, err := yamldoc.Split(data)
	if err != nil {
		return nil, &Error{File: filename, Err: err}
	}
	var (
		out  []*Suite
		errs []error
	)
	add := func(suite, cas, field string, err error) {
		errs = append(errs, &Error{File: filename, Suite: suite, Case: cas, Field: field, Err: err})
	}
	for _, d := range docs {
		s := &Suite{}
		if err := yamldoc.Decode(d, s); err != nil {
			if errors.Is(err, yamldoc.ErrEmpty) {
				continue
			}
			add("", "", "", err)
			continue
		}
		s.File = filename
		name := s.Metadata.Name
		if s.APIVersion != policies.APIVersion {
			add(name, "", "apiVersion", fmt.Errorf("must be %q, got %q", policies.APIVersion, s.APIVersion))
		}
		if s.Kind != KindPolicyTest {
			add(name, "", "kind", fmt.Errorf("must be %q, got %q", KindPolicyTest, s.Kind))
		}
		if name == "" {
			add(name, "", "metadata.name", errors.New("required"))
		}
		if len(s.Cases) == 0 {
			add(name, "", "cases", errors.New("a suite needs at least one case"))
		}
		seen := map[string]bool{}
		for i, c := range s.Cases {
			cname := c.Name
			if cname == "" {
				cname = fmt.Sprintf("#%d", i)
				add(name, cname, "name", errors.New("required"))
			} else if seen[c.Name] {
				add(name, cname, "name", errors.New("duplicate case name in this suite"))
			}
			seen[c.Name] = true
			for _, err := range checkCase(&c) {
				var fe fieldError
				if errors.As(err, &fe) {
					add(name, cname, fe.field, fe.err)
				}
			}
		}
		out = append(out, s)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

type fieldError struct {
	field string
	err   error
}

func (e fieldError) Error() string { return e.field + ": " + e.err.Error() }

func checkCase(c *Case) []error {
	var errs []error
	if _, ok := policies.ParseEffect(c.Expect.Effect); !ok {
		errs = append(errs, fieldError{"expect.effect", fmt.Errorf("must be allow, deny or step_up, got %q", c.Expect.Effect)})
	}
	if dr := c.Expect.DryRun; dr != nil {
		if _, ok := policies.ParseEffect(dr.Effect); !ok && dr.Effect != "none" {
			errs = append(errs, fieldError{"expect.dryRun.effect", fmt.Errorf("must be allow, deny, step_up or none, got %q", dr.Effect)})
		}
	}
	r := &c.Request
	if r.MCP != nil {
		if _, err := r.MCP.Parse(); err != nil {
			errs = append(errs, fieldError{"request.mcp", err})
		}
	}
	if r.GRPC != "" {
		svc, method, ok := strings.Cut(r.GRPC, "/")
		if !ok || svc == "" || method == "" || strings.Contains(method, "/") {
			errs = append(errs, fieldError{"request.grpc", fmt.Errorf("%q must be pkg.Service/Method", r.GRPC)})
		}
		if r.GRPCService != "" || r.GRPCMethod != "" {
			errs = append(errs, fieldError{"request.grpc", errors.New("set grpc or grpcService/grpcMethod, not both")})
		}
	}
	if g := r.grpc(); g != "" && r.Path != "" && r.Path != "/"+g {
		errs = append(errs, fieldError{"request.path", fmt.Errorf("a gRPC call's path is /%s (leave path out)", g)})
	}
	return errs
}

// CheckRequest returns the CheckRequest Envoy would send for the case's
// request: the subject as the mTLS peer, the intent, task and headers as
// request headers, a grpc call as POST /pkg.Service/Method with
// content-type application/grpc, labels as context extensions.
func (r *Request) CheckRequest() *authv3.CheckRequest {
	p := envoyreq.Params{
		Principal: r.Subject, Destination: r.Destination, Method: r.Method, Path: r.Path, Host: r.Host,
		ContextExtensions: r.Labels,
	}
	if r.MCP != nil {
		// An MCP request: POST /mcp on a route labelled protocol: mcp,
		// the JSON-RPC text as the body Envoy sends.
		p.Body, _ = r.MCP.body()
		if p.Method == "" {
			p.Method = "POST"
		}
		if p.Path == "" {
			p.Path = "/mcp"
		}
		if _, ok := r.Labels[attrs.LabelProtocol]; !ok {
			p.ContextExtensions = map[string]string{attrs.LabelProtocol: attrs.ProtocolMCP}
			for k, v := range r.Labels {
				p.ContextExtensions[k] = v
			}
		}
		if _, ok := r.Headers["content-type"]; !ok {
			p.Headers = append(p.Headers, [2]string{"content-type", "application/json"})
		}
	}
	if g := r.grpc(); g != "" {
		if p.Path == "" {
			p.Path = "/" + g
		}
		if p.Method == "" {
			p.Method = "POST"
		}
		if _, ok := r.Headers["content-type"]; !ok {
			p.Headers = append(p.Headers, [2]string{"content-type", "application/grpc"})
		}
	}
	names := make([]string, 0, len(r.Headers))
	for k := range r.Headers {
		names = append(names, k)
	}
	slices.Sort(names)
	for _, k := range names {
		p.Headers = append(p.Headers, [2]string{k, r.Headers[k]})
	}
	if r.Intent != "" {
		p.Headers = append(p.Headers, [2]string{headers.IntentHeader, r.Intent})
	}
	if r.Task != "" {
		p.Headers = append(p.Headers, [2]string{headers.TaskHeader, r.Task})
	}
	return envoyreq.Build(p)
}

func (r *Request) grpc() string {
	if r.GRPC != "" {
		return r.GRPC
	}
	if r.GRPCService != "" || r.GRPCMethod != "" {
		return r.GRPCService + "/" + r.GRPCMethod
	}
	return ""
}

// Build turns a case's request into the policies.Request a replica would
// decide on, through the replica's own extraction (attrs.Extractor): the
// path, host and headers are normalized and checked exactly as a replica
// does. A request the replica refuses before any policy is evaluated
// returns a deny Decision with the replica's reason code instead. A case's
// mandate stands for a verified token and is bound as the replica binds
// one (attrs.BindMandate).
func (r *Request) Build(x *attrs.Extractor) (*policies.Request, *policies.Decision) {
	now := DefaultNow
	if r.Now != nil {
		now = *r.Now
	}
	var a attrs.Attributes
	if err := x.Extract(r.CheckRequest(), now, &a); err != nil {
		return nil, refused(attrs.ReasonOf(err))
	}
	if a.Token != "" {
		// A raw token cannot be verified without the control plane's
		// keys: a replica without them denies it. Cases state the
		// verified mandate in request.mandate instead.
		return nil, refused("mandate_unverifiable")
	}
	out := &a.Request
	if m := r.Mandate; m != nil {
		pm := &policies.Mandate{ID: m.ID, Issuer: m.Issuer, Task: m.Task, Intent: m.Intent, Chain: m.Chain}
		if err := attrs.BindMandate(out, pm); err != nil {
			return nil, refused(attrs.ReasonOf(err))
		}
	}
	return out, nil
}

func refused(reason string) *policies.Decision {
	return &policies.Decision{Effect: policies.EffectDeny, Reason: policies.Reason(reason)}
}

// extractor returns the extraction a replica would run, trusting the
// trust domains the suites' subjects and destinations name (which trust
// domains a replica accepts is a deployment setting, not a policy one).
func extractor(suites []*Suite) (*attrs.Extractor, error) {
	seen := map[spiffeid.TrustDomain]bool{}
	var tds []spiffeid.TrustDomain
	for _, s := range suites {
		for i := range s.Cases {
			for _, v := range []string{s.Cases[i].Request.Subject, s.Cases[i].Request.Destination} {
				id, err := identity.ParseID(v)
				if err != nil || seen[id.TrustDomain()] {
					continue
				}
				seen[id.TrustDomain()] = true
				tds = append(tds, id.TrustDomain())
			}
		}
	}
	if len(tds) == 0 {
		tds = append(tds, spiffeid.RequireTrustDomainFromString("example.org"))
	}
	res, err := identity.New(identity.Config{TrustDomains: tds})
	if err != nil {
		return nil, fmt.Errorf("policytest: %w", err)
	}
	return attrs.New(attrs.Config{Identity: res})
}
