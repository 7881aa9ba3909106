// Package headers validates the request headers that declare intent:
// x-mandate-intent, x-mandate-task and x-mandate.
//
// Envoy sends header names lowercased and merges repeated headers into one
// value joined by ','; it replaces non-UTF-8 bytes by '!'. None of the
// values accepted here may contain ',' or '!', so a repeated header is
// always detected (ReasonDuplicateHeader) and mangled bytes are rejected by
// the charset. A missing header is not an error: it declares nothing.
//
// Every error is an *Error whose Reason is safe to return to clients.
package headers

import (
	"errors"
	"fmt"
	"strings"
)

// Header names, lowercased as Envoy sends them.
const (
	IntentHeader  = "x-mandate-intent"
	TaskHeader    = "x-mandate-task"
	MandateHeader = "x-mandate"
)

// Length limits, in bytes.
const (
	MaxIntentLength  = 128
	MaxTaskLength    = 256
	MaxMandateLength = 8 << 10
)

// Reason is a short machine-readable code, safe to return to clients.
type Reason string

// Reason codes.
const (
	// ReasonDuplicateHeader: the header was sent more than once (Envoy
	// merged the values with ',').
	ReasonDuplicateHeader Reason = "duplicate_header"
	// ReasonHeaderTooLong: the value is over the header's limit.
	ReasonHeaderTooLong Reason = "header_too_long"
	// ReasonBadIntent: x-mandate-intent is empty or has a character
	// outside [A-Za-z0-9._:/-].
	ReasonBadIntent Reason = "bad_intent"
	// ReasonBadTask: same for x-mandate-task.
	ReasonBadTask Reason = "bad_task"
	// ReasonBadMandateHeader: x-mandate is not a compact JWS.
	ReasonBadMandateHeader Reason = "bad_mandate_header"
)

// Error is the error type of this package.
type Error struct {
	// Reason is safe for clients.
	Reason Reason
	// Header is the header's name.
	Header string
	// Err says what was wrong, for logs.
	Err error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return "headers: " + e.Header + ": " + string(e.Reason)
	}
	return "headers: " + e.Header + ": " + string(e.Reason) + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Single returns the one value of header name (lowercase, as Envoy sends
// it) and whether it was present. A value containing ',' means Envoy merged
// several headers of that name: ReasonDuplicateHeader. Use it only for
// headers whose values never contain ','.
func Single(headers map[string]string, name string) (string, bool, error) {
	v, ok := headers[name]
	return SingleValue(name, v, ok)
}

// SingleValue is Single for a value already read from the headers (ok:
// the header is present), for callers that read several headers in one
// pass over the map.
func SingleValue(name, v string, ok bool) (string, bool, error) {
	if !ok {
		return "", false, nil
	}
	if strings.IndexByte(v, ',') >= 0 {
		return "", true, &Error{Reason: ReasonDuplicateHeader, Header: name, Err: errors.New("header sent more than once (value contains ',')")}
	}
	return v, true, nil
}

// Intent returns the declared intent from x-mandate-intent: 1..128 bytes
// of [A-Za-z0-9._:/-], one value. Missing returns "", nil.
func Intent(headers map[string]string) (string, error) {
	v, ok := headers[IntentHeader]
	return IntentValue(v, ok)
}

// IntentValue is Intent for the value of x-mandate-intent already read
// (ok: present).
func IntentValue(v string, ok bool) (string, error) {
	return token(IntentHeader, v, ok, MaxIntentLength, ReasonBadIntent)
}

// Task returns the declared task id from x-mandate-task: 1..256 bytes of
// [A-Za-z0-9._:/-], one value. Missing returns "", nil.
func Task(headers map[string]string) (string, error) {
	v, ok := headers[TaskHeader]
	return TaskValue(v, ok)
}

// TaskValue is Task for the value of x-mandate-task already read (ok:
// present).
func TaskValue(v string, ok bool) (string, error) {
	return token(TaskHeader, v, ok, MaxTaskLength, ReasonBadTask)
}

func token(name, v string, ok bool, maxLen int, bad Reason) (string, error) {
	v, ok, err := SingleValue(name, v, ok)
	if err != nil || !ok {
		return "", err
	}
	if len(v) > maxLen {
		return "", &Error{Reason: ReasonHeaderTooLong, Header: name, Err: fmt.Errorf("value is %d bytes, max %d", len(v), maxLen)}
	}
	if v == "" {
		return "", &Error{Reason: bad, Header: name, Err: errors.New("empty value")}
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; !isTokenChar(c) {
			return "", &Error{Reason: bad, Header: name, Err: fmt.Errorf("invalid character %q", c)}
		}
	}
	return v, nil
}

func isTokenChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '.' || c == '_' || c == ':' || c == '/' || c == '-'
}

// Mandate returns the mandate token from x-mandate: one value of at most
// 8 KiB in compact JWS form, three non-empty base64url parts (no padding)
// separated by exactly two dots. It checks the shape only; the signature
// is verified elsewhere. Missing returns "", nil.
func Mandate(headers map[string]string) (string, error) {
	v, ok := headers[MandateHeader]
	return MandateValue(v, ok)
}

// MandateValue is Mandate for the value of x-mandate already read (ok:
// present).
func MandateValue(v string, ok bool) (string, error) {
	v, ok, err := SingleValue(MandateHeader, v, ok)
	if err != nil || !ok {
		return "", err
	}
	if len(v) > MaxMandateLength {
		return "", &Error{Reason: ReasonHeaderTooLong, Header: MandateHeader, Err: fmt.Errorf("value is %d bytes, max %d", len(v), MaxMandateLength)}
	}
	dots, partLen := 0, 0
	for i := 0; i < len(v); i++ {
		switch jwsClass[v[i]] {
		case jwsDot:
			if partLen == 0 {
				return "", &Error{Reason: ReasonBadMandateHeader, Header: MandateHeader, Err: errors.New("empty JWS part")}
			}
			dots++
			partLen = 0
		case jwsB64:
			partLen++
		default:
			return "", &Error{Reason: ReasonBadMandateHeader, Header: MandateHeader, Err: fmt.Errorf("invalid character %q in compact JWS", v[i])}
		}
	}
	if dots != 2 || partLen == 0 {
		return "", &Error{Reason: ReasonBadMandateHeader, Header: MandateHeader, Err: errors.New("not a compact JWS (want three non-empty parts)")}
	}
	return v, nil
}

func isBase64URL(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// Byte classes of a compact JWS; a table lookup keeps the scan of a
// kilobyte token on the hot path cheap.
const (
	jwsOther uint8 = iota
	jwsB64
	jwsDot
)

var jwsClass = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		switch {
		case c == '.':
			t[c] = jwsDot
		case isBase64URL(byte(c)):
			t[c] = jwsB64
		}
	}
	return t
}()
