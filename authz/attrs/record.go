package attrs

import (
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

// TraceID returns the trace id of a W3C traceparent header value
// ("00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>"), or "" when
// the value is not a valid traceparent (wrong shape, version ff, upper-case
// hex, or an all-zero id). Version 00 must be exactly 55 bytes; later
// versions may append "-..." fields.
func TraceID(v string) string {
	if len(v) < 55 || (len(v) > 55 && v[55] != '-') {
		return ""
	}
	if v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return ""
	}
	ver, trace, parent, flags := v[0:2], v[3:35], v[36:52], v[53:55]
	if !lowerHex(ver) || ver == "ff" || (ver == "00" && len(v) != 55) {
		return ""
	}
	if !lowerHex(trace) || !lowerHex(parent) || !lowerHex(flags) {
		return ""
	}
	if strings.Trim(trace, "0") == "" || strings.Trim(parent, "0") == "" {
		return ""
	}
	return trace
}

func lowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
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
