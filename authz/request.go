package authz

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
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

// stepUpID names an approval request: the same subject, task, action and
// rule always get the same id, so repeated attempts wait on one approval.
// For an MCP request the action is the method and its tool or resource,
// and the id also covers the argument values the step_up rule's
// condition read (argKeys, or all arguments when allArgs): an approval
// of one pull request is not an approval of another. It returns those
// values too (raw JSON by name; "*" holds all of them).
func stepUpID(r *policies.Request, policy, rule string, argKeys []string, allArgs bool) (string, map[string]string) {
	h := sha256.New()
	write := func(f string) {
		var n [4]byte
		n[0], n[1], n[2], n[3] = byte(len(f)>>24), byte(len(f)>>16), byte(len(f)>>8), byte(len(f))
		h.Write(n[:])
		h.Write([]byte(f))
	}
	for _, f := range []string{r.Subject, r.Task, r.Method, r.Path, r.GRPCService, r.GRPCMethod, policy, rule} {
		write(f)
	}
	var args map[string]string
	if c := r.MCP; c != nil {
		for _, f := range []string{"mcp", c.Method, c.Tool, c.ResourceURI} {
			write(f)
		}
		switch {
		case allArgs:
			args = map[string]string{"*": c.Arguments}
			write("*")
			write(c.Arguments)
		case len(argKeys) > 0:
			args = make(map[string]string, len(argKeys))
			mcp.Members(c.Arguments, func(name, value string) bool {
				if slices.Contains(argKeys, name) {
					args[name] = value
				}
				return true
			})
			for _, k := range argKeys {
				write(k)
				write(args[k]) // "" when absent: no JSON value is empty
			}
			for k, v := range args {
				args[k] = shorten(v, maxShownArgument)
			}
		}
	}
	if args["*"] != "" {
		args["*"] = shorten(args["*"], maxShownArgument)
	}
	return "ar-" + hex.EncodeToString(h.Sum(nil)[:10]), args
}

// ApprovalRequestID is the approval-request id a replica hands out for a
// step-up of a request that is not an MCP call: mandate-cp recomputes it
// from what a replica reports, so a report cannot pair one request's id
// with another request's content.
func ApprovalRequestID(subject, task, method, path, grpcService, grpcMethod, policy, rule string) string {
	id, _ := stepUpID(&policies.Request{Subject: subject, Task: task, Method: method, Path: path,
		GRPCService: grpcService, GRPCMethod: grpcMethod}, policy, rule, nil, false)
	return id
}

// maxShownArgument bounds an argument value shown to the approver (the id
// binds the whole value).
const maxShownArgument = 1000

// shorten cuts s to at most n bytes on a rune boundary, marking the cut.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
