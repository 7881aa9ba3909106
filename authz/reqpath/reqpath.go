// Package reqpath normalizes the request path Envoy reports in
// attributes.request.http.path so that a decision is made on the same path
// the upstream will serve, whatever Envoy's own normalization settings.
//
// Normalize splits the :path into path and query and applies, in order:
//
//  1. At most MaxLength (8 KiB) bytes in all, else ReasonPathTooLong.
//  2. The path must start with '/' (no "*", no absolute-form URL, no
//     authority-form), else ReasonBadPath.
//  3. No control characters (NUL, CR, LF, ...), spaces or non-ASCII bytes
//     anywhere in the value, and no backslash in the path: ReasonBadPath
//     (like Envoy's strict mode; upstreams that turn '\' into '/' would
//     otherwise see a different path). The path may only hold RFC 3986
//     pchar characters, '/' and percent-encodings; the query may hold any
//     printable ASCII but '#'.
//  4. A fragment ('#' and what follows) is dropped: Envoy strips it and no
//     upstream receives it.
//  5. Percent-encodings: a '%' not followed by two hex digits is
//     ReasonBadPercentEncoding. Encoded unreserved characters
//     (ALPHA DIGIT - . _ ~) are decoded ("%41" -> "A", "%2e" -> "."). An
//     encoded '/' or '\' ("%2F", "%5C") is ReasonEncodedSlash: upstreams
//     disagree on whether it separates segments (CVE-2021-29492, Istio
//     CVE-2021-31920). Encoded control characters (%00-%1F, %7F) are
//     ReasonBadPath. Any other encoding is kept, its hex digits uppercased.
//  6. Repeated slashes are merged ("//admin" -> "/admin"). The path is never
//     given to url.Parse, which reads "//admin" as a host (OPA-Envoy
//     CVE-2026-26205).
//  7. "." and ".." segments are removed as RFC 3986 remove_dot_segments
//     does, after step 5, so "%2e%2e" counts as "..". A ".." that would
//     climb above the root is ReasonPathTraversal, and so is a segment
//     that is "." or ".." followed by a ';' parameter ("..;", "..%3B"),
//     which some servers (Tomcat and others) treat as "..".
//  8. Path parameters: a ';' in the path ("/a;x/b", "/a;/b") is
//     ReasonPathParameter: Tomcat, Jetty, Spring and Undertow serve
//     "/secrets;jsessionid=x/db" as "/secrets/db". With
//     Options.StripParameters (a route's opt-in) each segment is cut at its
//     first ';' instead, and rules match what is left. An encoded ';'
//     ("%3B") is ReasonPathParameter either way.
//  9. Double encoding: "%25" followed by two hex digits ("%252F", which a
//     second decode makes "%2F") is ReasonDoubleEncoding.
//  10. A segment ending in '.' ("/secrets./x", also "%2e"-encoded) is
//     ReasonTrailingDot: Windows and some file servers drop the dot.
//  11. With Options.FoldCase (a route's label for case-insensitive
//     upstreams) the path is lowercased (percent-encodings keep their
//     upper-case hex), and rules compare folded patterns.
//
// A path that normalizes to something else is not an error: the decision
// is made on the normalized form. A trailing slash is kept ("/a/" and "/a"
// are different paths). The query is returned raw, without the '?'.
//
// An already-normal path (no '%', no empty, "." or ".." segment) is
// returned without allocating.
package reqpath

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
)

// MaxLength is the longest :path (path and query) accepted.
const MaxLength = 8 << 10

// Reason is a short machine-readable code, safe to return to clients.
type Reason string

// Reason codes.
const (
	ReasonBadPath            Reason = "bad_path"
	ReasonEncodedSlash       Reason = "encoded_slash"
	ReasonPathTooLong        Reason = "path_too_long"
	ReasonBadPercentEncoding Reason = "bad_percent_encoding"
	ReasonPathTraversal      Reason = "path_traversal"
	ReasonPathParameter      Reason = "path_parameter"
	ReasonDoubleEncoding     Reason = "double_encoding"
	ReasonTrailingDot        Reason = "trailing_dot"
)

// Options are a route's opt-ins (set from its labels by authz/attrs).
type Options struct {
	// StripParameters: the upstream ignores ';' path parameters; cut
	// them from each segment instead of refusing the path.
	StripParameters bool
	// FoldCase: the upstream matches paths case-insensitively; lowercase
	// the path.
	FoldCase bool
}

// Error is the error type of this package.
type Error struct {
	// Reason is safe for clients.
	Reason Reason
	// Err says what was wrong, for logs.
	Err error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "reqpath: " + string(e.Reason)
	}
	return "reqpath: " + string(e.Reason) + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

func newErr(r Reason, msg string) *Error { return &Error{Reason: r, Err: errors.New(msg)} }

// Normalize validates and normalizes raw, the :path of a request as Envoy
// reports it (path, optional "?query", possibly "#fragment"). See the
// package doc for the rules. Errors are *Error.
func Normalize(raw string) (path string, query string, err error) {
	return NormalizeWith(raw, Options{})
}

// NormalizeWith is Normalize with a route's options.
func NormalizeWith(raw string, o Options) (path string, query string, err error) {
	if len(raw) > MaxLength {
		return "", "", &Error{Reason: ReasonPathTooLong, Err: fmt.Errorf("path is %d bytes, max %d", len(raw), MaxLength)}
	}
	if raw == "" || raw[0] != '/' {
		return "", "", newErr(ReasonBadPath, "path must start with '/'")
	}
	end := len(raw)
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c <= ' ' || c >= 0x7f {
			return "", "", &Error{Reason: ReasonBadPath, Err: fmt.Errorf("path has control, space or non-ASCII byte 0x%02x", c)}
		}
		if end == len(raw) && (c == '?' || c == '#') {
			end = i
		}
	}
	p := raw[:end]
	if end < len(raw) && raw[end] == '?' {
		query = raw[end+1:]
		if h := strings.IndexByte(query, '#'); h >= 0 {
			query = query[:h]
		}
	}
	needsWork, err := scan(p, o)
	if err != nil {
		return "", "", err
	}
	if !needsWork {
		return p, query, nil
	}
	path, err = normalizeSlow(p, o)
	if err != nil {
		return "", "", err
	}
	return path, query, nil
}

// scan checks p's characters and reports whether p needs normalizing.
func scan(p string, o Options) (needsWork bool, err error) {
	segStart := 1
	for i := 1; i <= len(p); i++ {
		if i < len(p) && p[i] != '/' {
			c := p[i]
			switch {
			case c == '%':
				needsWork = true
			case c == ';':
				if !o.StripParameters {
					return false, paramErr()
				}
				needsWork = true
			case c >= 'A' && c <= 'Z' && o.FoldCase:
				needsWork = true
			case !isPathChar(c):
				return false, badChar(c)
			}
			continue
		}
		seg := p[segStart:i]
		switch {
		case seg == "" && i < len(p), seg == ".", seg == "..":
			needsWork = true
		case dotParam(seg):
			return false, dotParamErr()
		case seg != "" && seg[len(seg)-1] == '.':
			return false, trailingDotErr()
		}
		segStart = i + 1
	}
	return needsWork, nil
}

func normalizeSlow(p string, o Options) (string, error) {
	d := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c != '%' {
			if c != '/' && !isPathChar(c) {
				return "", badChar(c)
			}
			d = append(d, c)
			continue
		}
		if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
			return "", newErr(ReasonBadPercentEncoding, "'%' not followed by two hex digits")
		}
		b := unhex(p[i+1])<<4 | unhex(p[i+2])
		switch {
		case b == ';':
			return "", paramErr()
		case b == '%' && i+4 < len(p) && isHex(p[i+3]) && isHex(p[i+4]):
			return "", newErr(ReasonDoubleEncoding, `path has "%25" followed by hex digits (decodes to a further escape)`)
		case b == '/' || b == '\\':
			return "", newErr(ReasonEncodedSlash, "path has an encoded '/' or '\\' (%2F, %5C)")
		case b < 0x20 || b == 0x7f:
			return "", newErr(ReasonBadPath, "path has an encoded control character")
		case isUnreserved(b):
			d = append(d, b)
		default:
			d = append(d, '%', upperHex(p[i+1]), upperHex(p[i+2]))
		}
		i += 2
	}
	return removeDotSegments(d, o)
}

// removeDotSegments merges slashes and resolves "." and ".." in d, which
// starts with '/'.
func removeDotSegments(d []byte, o Options) (string, error) {
	out := make([]byte, 1, len(d))
	out[0] = '/'
	lastNormal := false
	for start := 1; start <= len(d); {
		j := bytes.IndexByte(d[start:], '/')
		if j < 0 {
			j = len(d)
		} else {
			j += start
		}
		seg := d[start:j]
		if o.StripParameters {
			if dotParam(string(seg)) {
				return "", dotParamErr()
			}
			if k := bytes.IndexByte(seg, ';'); k >= 0 {
				seg = seg[:k]
			}
		}
		switch {
		case len(seg) == 0 || string(seg) == ".":
			lastNormal = false
		case string(seg) == "..":
			if len(out) == 1 {
				return "", newErr(ReasonPathTraversal, `".." above the root`)
			}
			out = out[:bytes.LastIndexByte(out[:len(out)-1], '/')+1]
			lastNormal = false
		default:
			if dotParam(string(seg)) {
				return "", dotParamErr()
			}
			if seg[len(seg)-1] == '.' {
				return "", trailingDotErr()
			}
			if o.FoldCase {
				seg = foldSegment(seg)
			}
			out = append(out, seg...)
			out = append(out, '/')
			lastNormal = true
		}
		start = j + 1
	}
	if lastNormal {
		out = out[:len(out)-1]
	}
	return string(out), nil
}

func paramErr() *Error {
	return newErr(ReasonPathParameter, "path has a ';' path parameter")
}

func trailingDotErr() *Error {
	return newErr(ReasonTrailingDot, "path has a segment ending in '.'")
}

// foldSegment lowercases ASCII letters in place, leaving the hex digits of
// percent-encodings upper-case.
func foldSegment(seg []byte) []byte {
	for i := 0; i < len(seg); i++ {
		switch c := seg[i]; {
		case c == '%':
			i += 2
		case c >= 'A' && c <= 'Z':
			seg[i] = c + 'a' - 'A'
		}
	}
	return seg
}

func dotParamErr() *Error {
	return newErr(ReasonPathTraversal, `path has a "." or ".." segment with a ';' parameter`)
}

// dotParam reports whether seg is "." or ".." followed by a ';' parameter,
// literal or encoded.
func dotParam(seg string) bool {
	rest, ok := strings.CutPrefix(seg, "..")
	if !ok {
		rest, ok = strings.CutPrefix(seg, ".")
	}
	if !ok {
		return false
	}
	return strings.HasPrefix(rest, ";") || len(rest) >= 3 && rest[0] == '%' && rest[1] == '3' && (rest[2] == 'B' || rest[2] == 'b')
}

func badChar(c byte) *Error {
	if c == '\\' {
		return newErr(ReasonBadPath, "path has a backslash")
	}
	return &Error{Reason: ReasonBadPath, Err: fmt.Errorf("path has invalid character %q", c)}
}

// isPathChar reports whether c is an RFC 3986 pchar other than '%'.
func isPathChar(c byte) bool {
	if isUnreserved(c) {
		return true
	}
	switch c {
	case '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':', '@':
		return true
	}
	return false
}

func isUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

func upperHex(c byte) byte {
	if c >= 'a' && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}
