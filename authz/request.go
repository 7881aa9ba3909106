package authz

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"slices"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/mandate-dev/mandate/authz/headers"
	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/authz/mcp"
	"github.com/mandate-dev/mandate/authz/reqpath"
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

// reasonOf extracts the client-safe reason code of a parser error; an
// error of unknown kind is reported as bad_request, never by its text.
func reasonOf(err error) string {
	var idErr *identity.Error
	if errors.As(err, &idErr) {
		return string(idErr.Reason)
	}
	var pathErr *reqpath.Error
	if errors.As(err, &pathErr) {
		return string(pathErr.Reason)
	}
	var hdrErr *headers.Error
	if errors.As(err, &hdrErr) {
		return string(hdrErr.Reason)
	}
	var rErr *ReasonError
	if errors.As(err, &rErr) {
		return rErr.Reason
	}
	var mcpErr *mcp.Error
	if errors.As(err, &mcpErr) {
		return string(mcpErr.Reason)
	}
	return reasonBadRequest
}

var errBadMethod = errors.New("authz: method is not an HTTP token")

// validMethod accepts an HTTP method token (RFC 9110), as sent.
func validMethod(m string) (string, error) {
	if m == "" || len(m) > 32 {
		return "", errBadMethod
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !(c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return "", errBadMethod
		}
	}
	return m, nil
}

var errBadHost = errors.New("authz: bad host")

// normalizeHost lowercases the authority and strips a port and the
// trailing dot of a fully qualified name ("secret.internal." is the host
// "secret.internal" to DNS and to most upstreams: left in, it would slip
// past a deny rule on that host). The host is client-set and never
// identity; policies may still match on it.
func normalizeHost(h string) (string, error) {
	if len(h) > 255 {
		return "", errBadHost
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		port := h[i+1:]
		for j := 0; j < len(port); j++ {
			if port[j] < '0' || port[j] > '9' {
				return "", errBadHost
			}
		}
		h = h[:i]
	}
	if len(h) > 1 && h[len(h)-1] == '.' {
		h = h[:len(h)-1]
	}
	if h != "" && (h[0] == '.' || h[len(h)-1] == '.' || strings.Contains(h, "..")) {
		return "", errBadHost // empty label: no host a policy could name
	}
	lower := true
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c >= 'A' && c <= 'Z':
			lower = false
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '.', c == '[', c == ']', c == ':', c == '_':
		default:
			return "", errBadHost
		}
	}
	if !lower {
		h = strings.ToLower(h)
	}
	return h, nil
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
		}
	}
	return "ar-" + hex.EncodeToString(h.Sum(nil)[:10]), args
}

// flattenHeaderMap turns Envoy's raw header_map (sent with
// encode_raw_headers) into the form of the headers field: names lowercased,
// repeated names merged with ",".
func flattenHeaderMap(hs []*corev3.HeaderValue) map[string]string {
	out := make(map[string]string, len(hs))
	for _, h := range hs {
		k := strings.ToLower(h.GetKey())
		v := h.GetValue()
		if raw := h.GetRawValue(); len(raw) > 0 {
			v = string(raw)
		}
		if prev, ok := out[k]; ok {
			v = prev + "," + v
		}
		out[k] = v
	}
	return out
}
