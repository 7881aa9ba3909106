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
// argument values (raw JSON by name; "*" holds all of them) and the
// header values too.
func stepUpID(r *policies.Request, policy, rule string, rd reads) (id string, args, hdrs map[string]string) {
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
	if c := r.MCP; c != nil {
		for _, f := range []string{"mcp", c.Method, c.Tool, c.ResourceURI} {
			write(f)
		}
		switch {
		case rd.allArgs:
			args = map[string]string{"*": c.Arguments}
			write("*")
			write(c.Arguments)
		case len(rd.argKeys) > 0:
			args = make(map[string]string, len(rd.argKeys))
			mcp.Members(c.Arguments, func(name, value string) bool {
				if slices.Contains(rd.argKeys, name) {
					args[name] = value
				}
				return true
			})
			for _, k := range rd.argKeys {
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
	keys := rd.hdrKeys
	if rd.allHdrs {
		keys = slices.Sorted(maps.Keys(r.Headers))
	}
	if len(keys) > 0 {
		hdrs = make(map[string]string, len(keys))
		for _, k := range keys {
			hdrs[k] = r.Headers[k]
		}
		writeHeaders(write, hdrs)
	}
	return "ar-" + hex.EncodeToString(h.Sum(nil)[:10]), args, hdrs
}

// writeHeaders hashes header values in name order, "" for an absent one.
func writeHeaders(write func(string), hdrs map[string]string) {
	write("headers")
	for _, k := range slices.Sorted(maps.Keys(hdrs)) {
		write(k)
		write(hdrs[k])
	}
}

// ApprovalRequestID is the approval-request id a replica hands out for a
// step-up of a request that is not an MCP call, whose step_up rule read
// the given header values: mandate-cp recomputes it from what a replica
// reports, so a report cannot pair one request's id with another
// request's content.
func ApprovalRequestID(subject, task, method, path, grpcService, grpcMethod, policy, rule string, headers map[string]string) string {
	r := &policies.Request{Subject: subject, Task: task, Method: method, Path: path,
		GRPCService: grpcService, GRPCMethod: grpcMethod, Headers: headers}
	id, _, _ := stepUpID(r, policy, rule, reads{hdrKeys: slices.Sorted(maps.Keys(headers))})
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
