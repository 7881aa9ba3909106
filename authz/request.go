package authz

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"slices"
	"unicode/utf8"

	"github.com/mandate-dev/mandate/authz/attrs"
	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/policies"
)

// ReasonError is an error carrying a reason code that is safe to send to
// the client.
type ReasonError struct {
	Reason string
	Err    error
}

func (e *ReasonError) Error() string {
	if e.Err == nil {
		return "authz: " + e.Reason
	}
	return "authz: " + e.Reason + ": " + e.Err.Error()
}

func (e *ReasonError) Unwrap() error { return e.Err }

// reasonOf extracts the client-safe reason code of an error; an error of
// unknown kind is reported as bad_request, never by its text.
func reasonOf(err error) string {
	var rErr *ReasonError
	if errors.As(err, &rErr) {
		return rErr.Reason
	}
	return attrs.ReasonOf(err)
}

// reads names the inputs a step_up rule's condition read: MCP arguments
// (argKeys, or all when allArgs) and request headers (hdrKeys, or all
// when allHdrs).
type reads struct {
	argKeys []string
	allArgs bool
	hdrKeys []string
	allHdrs bool
}

// stepUpID names an approval request: the same subject, task, action and
// rule always get the same id, so repeated attempts wait on one approval.
// For an MCP request the action is the method and its tool or resource,
// and the id also covers the argument values the step_up rule's
// condition read: an approval of one pull request is not an approval of
// another. Likewise it covers the values of the headers the condition
// read ("" for an absent one): an approval of a refund of 600 is not one
// of 999999999999, of 1e99 or of a refund with no amount. It returns the
// argument values as reported (raw JSON by name, "" for an absent one;
// "*" holds all of them; see reportedArgument) and the header values too.
//
// The id is computed from exactly what a replica reports
// (ApprovalRequestID), so mandate-cp recomputes it and a report cannot
// pair one request's id with another request's content.
func stepUpID(r *policies.Request, policy, rule string, rd reads) (id string, args, hdrs map[string]string) {
	content := StepUpContent{Subject: r.Subject, Task: r.Task, Method: r.Method, Path: r.Path,
		GRPCService: r.GRPCService, GRPCMethod: r.GRPCMethod, Policy: policy, Rule: rule}
	if c := r.MCP; c != nil {
		content.MCP = mcpName(c)
		switch {
		case rd.allArgs:
			args = map[string]string{"*": reportedArgument(c.Arguments)}
		case len(rd.argKeys) > 0:
			args = make(map[string]string, len(rd.argKeys))
			for _, k := range rd.argKeys {
				args[k] = ""
			}
			mcp.Members(c.Arguments, func(name, value string) bool {
				if _, read := args[name]; read {
					args[name] = reportedArgument(value)
				}
				return true
			})
		}
		content.MCPArguments = args
	}
	keys := rd.hdrKeys
	if rd.allHdrs {
		keys = slices.Sorted(maps.Keys(r.Headers))
	}
	if len(keys) > 0 {
		hdrs = make(map[string]string, len(keys))
		for _, k := range keys {
			hdrs[k] = r.Headers[k]
		}
		content.Headers = hdrs
	}
	return ApprovalRequestID(content), args, hdrs
}

// StepUpContent is what a replica reports of a step-up, and all an
// approval-request id is computed from.
type StepUpContent struct {
	Subject, Task, Method, Path, GRPCService, GRPCMethod, Policy, Rule string
	// MCP is the MCP request as "method name" (mcpName); "" for others.
	MCP string
	// MCPArguments are the argument values the rule read, as reported.
	MCPArguments map[string]string
	// Headers are the header values the rule read ("" when absent).
	Headers map[string]string
}

// ApprovalRequestID is the approval-request id of a step-up with this
// content. Replicas hand it out; mandate-cp recomputes it from what a
// replica reports.
func ApprovalRequestID(c StepUpContent) string {
	h := sha256.New()
	write := func(f string) {
		var n [4]byte
		n[0], n[1], n[2], n[3] = byte(len(f)>>24), byte(len(f)>>16), byte(len(f)>>8), byte(len(f))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	for _, f := range []string{c.Subject, c.Task, c.Method, c.Path, c.GRPCService, c.GRPCMethod, c.Policy, c.Rule} {
		write(f)
	}
	if c.MCP != "" {
		write("mcp")
		write(c.MCP)
		write("arguments")
		for _, k := range slices.Sorted(maps.Keys(c.MCPArguments)) {
			write(k)
			write(c.MCPArguments[k])
		}
	}
	if len(c.Headers) > 0 {
		write("headers")
		for _, k := range slices.Sorted(maps.Keys(c.Headers)) {
			write(k)
			write(c.Headers[k])
		}
	}
	return "ar-" + hex.EncodeToString(h.Sum(nil)[:10])
}

// maxShownArgument bounds an argument value shown to the approver.
const maxShownArgument = 1000

// reportedArgument is how an argument value is reported and bound: whole
// when at most maxShownArgument bytes, else its first bytes (cut on a
// rune boundary), "… [sha256:HEX]" and the SHA-256 of the whole value,
// which binds it. No raw JSON value ends like that (an array cannot end
// with a bare sha256:...), so the two forms cannot stand for each other.
func reportedArgument(v string) string {
	if len(v) <= maxShownArgument {
		return v
	}
	n := maxShownArgument
	for n > 0 && !utf8.RuneStart(v[n]) {
		n--
	}
	sum := sha256.Sum256([]byte(v))
	return v[:n] + "… [sha256:" + hex.EncodeToString(sum[:]) + "]"
}
