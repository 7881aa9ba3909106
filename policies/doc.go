// Package policies is Mandate's policy language: types, YAML loading,
// validation, CEL compilation, indexing and evaluation.
//
// # Documents
//
// Policies are YAML documents (several per file, separated by "---"),
// decoded strictly: unknown fields and duplicate keys are errors.
//
//	apiVersion: mandate.dev/v1
//	kind: Policy
//	metadata:
//	  name: support-agent          # unique across the set, a DNS label
//	  description: optional text
//	spec:
//	  mode: enforce                # enforce (default) | dry_run
//	  rules:
//	    - name: read-tickets-for-task      # unique within the policy, a DNS label
//	      effect: allow                    # allow | deny | step_up
//	      subjects: ["spiffe://example.org/agent/support/*"]   # required
//	      destinations: ["spiffe://example.org/svc/tickets"]   # optional = any
//	      hosts: ["tickets.internal", "*.corp.example"]        # optional = any
//	      intents: ["support.read"]        # optional = any
//	      requireMandate: true             # optional
//	      actions:                         # optional = any action
//	        - methods: [GET, HEAD]         # optional = any method
//	          paths: ["/tickets/**"]       # optional = any path
//	        - grpc: ["tickets.v1.Tickets/Get", "tickets.v1.Admin/*"]
//	        - mcp:                         # MCP routes (protocol: mcp)
//	            methods: [tools/call]      # optional = any JSON-RPC method
//	            tools: ["github.list_*"]   # tool-name globs (tools/call)
//	            # resources: ["file:///docs/**"]  # URI globs (resources/read...)
//	      labels: {resource: tickets}      # optional
//	      when: 'request.headers["x-ticket-id"] == task'       # optional CEL
//
// A rule matches a request when every matcher it sets matches:
//
//   - subjects, destinations: SPIFFE ID patterns (package pattern): a
//     spiffe:// URI with a literal lowercase trust domain; a path segment
//     "*" matches one segment, a final "**" any number (including none),
//     "agent-*" one segment with '*' standing for any characters.
//   - hosts: the request's host (port ignored) equals an entry, or ends in
//     ".suffix" for an entry "*.suffix" (which does not match "suffix").
//   - intents: the request declares one of them (a rule with intents never
//     matches a request without intent).
//   - requireMandate: the request carries a verified mandate.
//   - actions: one entry matches. An HTTP entry (methods and/or paths)
//     matches the method and the normalized path (pattern globs; paths
//     start with '/'); it also applies to gRPC requests, which are HTTP
//     POSTs to /pkg.Service/Method. A gRPC entry lists "pkg.Service/Method"
//     or "pkg.Service/*" and matches only gRPC requests. An MCP entry
//     matches only MCP requests (routes labelled protocol: mcp, whose
//     JSON-RPC body authz/mcp parsed): the method is one of methods, the
//     tool (tools/call) matches a tools glob, the resource URI
//     (resources/read, subscribe, unsubscribe) a resources glob; globs
//     use the pattern syntax ('*' within a '/'-segment, final "**").
//   - labels: each key is present in the route's context_extensions with
//     exactly that value.
//   - when: the CEL condition returns true.
//
// # Decisions
//
// Among matching rules of enforce-mode policies: any deny gives Deny
// (reason denied_by_rule), else any step_up gives StepUp
// (step_up_required), else any allow gives Allow (allowed), else Deny
// (no_matching_rule). The deciding rule is the first, in load order, of
// the winning effect. An empty set denies everything (no_policy). Rules of
// dry_run policies are evaluated the same way but only reported
// (Decision.DryRun, strongest match), never enforced.
//
// Conditions fail closed: an error (missing key, bad conversion, cost
// limit) in a deny or step_up rule's condition denies the request
// (condition_error); in an allow rule's condition the rule does not match,
// and the decision is condition_error if nothing else allows.
//
// # CEL conditions
//
// `when` is a CEL expression (cel.dev/cel-go, with the ext.Strings
// library) that must type-check to bool. It is compiled once, when the set
// is compiled, and each evaluation is bounded by ConditionCostLimit.
// Variables:
//
//	subject               string  caller's SPIFFE ID
//	destination           string  destination principal ("" when unknown)
//	intent                string  declared intent ("" when none)
//	task                  string  declared task id ("" when none)
//	request.method        string  HTTP method, upper-case
//	request.path          string  normalized path
//	request.host          string  host (:authority), lowercase
//	request.grpc_service  string  "" unless a gRPC request
//	request.grpc_method   string  "" unless a gRPC request
//	request.headers       map(string, string)  names lowercase; reading a
//	                      missing header is an error: guard with
//	                      "x" in request.headers or has(request.headers.x)
//	labels                map(string, string)  the route's context_extensions
//	mandate               dyn     null without a verified mandate, else a map
//	                      with the fields below; test with mandate != null
//	mandate.id, mandate.issuer, mandate.task, mandate.intent  string
//	mandate.chain         list(string)  delegation chain, root first
//	chain                 list(string)  mandate.chain, or [] without a mandate
//	now                   timestamp  the decision time
//	mcp.method            string  JSON-RPC method ("" unless an MCP request)
//	mcp.tool              string  params.name of tools/call, else ""
//	mcp.resource_uri      string  params.uri of resources/read, subscribe,
//	                      unsubscribe, else ""
//	mcp.arguments         map(string, dyn)  params.arguments of tools/call
//	                      and prompts/get as JSON values (numbers: int when
//	                      integral, else double); {} when absent; reading a
//	                      missing argument is an error: guard with has()
//
// request.* and mandate.* are qualified variable names, typed exactly:
// `request` alone is not a value. Reading a mandate.* variable without a
// mandate is an error (so the condition fails closed).
//
// Decisions that evaluated a condition reading `now` are not cacheable.
// Set.HeaderKeys lists the header names conditions read by constant name
// (request.headers["x"], request.headers.x, has(request.headers.x),
// "x" in request.headers);
// Set.ReadsAllHeaders reports a condition reading headers in any other way.
// A decision cache must key on those headers. Set.MCPArgumentKeys and
// Set.ReadsAllMCPArguments do the same for mcp.arguments, and
// Decision.ArgumentKeys names the arguments the deciding rule read (a
// step-up approval is bound to their values). Conditions naming an unknown
// request or mandate field, or an upper-case header name, do not compile.
//
// # Files
//
// LoadDir reads every *.yaml and *.yml file under a directory, recursively
// in sorted order, skipping hidden files and policy test files
// (*_test.yaml, *.test.yaml), which package policytest runs.
package policies
