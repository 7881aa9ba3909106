package frontproxy

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
)

var errInvalidAppendAction = errors.New("frontproxy: invalid header append_action")

// applyHeaderOptions applies HeaderValueOptions to h the way Envoy's
// ext_authz filter does:
//   - the deprecated `append` field, when set, wins: true appends to an
//     existing value with "," (or adds), false overwrites (or adds);
//   - otherwise append_action: APPEND_IF_EXISTS_OR_ADD adds another entry,
//     ADD_IF_ABSENT adds only when absent, OVERWRITE_IF_EXISTS_OR_ADD sets,
//     OVERWRITE_IF_EXISTS sets only when present.
//
// An unknown append_action is an error (the proxy then fails closed).
// Mutations of pseudo-headers, of Host and with invalid names are ignored.
func applyHeaderOptions(h http.Header, opts []*corev3.HeaderValueOption) error {
	for _, o := range opts {
		hv := o.GetHeader()
		if hv == nil {
			continue
		}
		key := hv.GetKey()
		val := hv.GetValue()
		if val == "" && len(hv.GetRawValue()) > 0 {
			val = string(hv.GetRawValue())
		}
		if !validHeaderName(key) || strings.EqualFold(key, "host") {
			continue
		}
		_, exists := h[http.CanonicalHeaderKey(key)]
		if a := o.GetAppend(); a != nil {
			if a.GetValue() {
				if exists {
					vs := h.Values(key)
					h.Set(key, strings.Join(vs, ",")+","+val)
				} else {
					h.Add(key, val)
				}
			} else {
				h.Set(key, val)
			}
			continue
		}
		switch o.GetAppendAction() {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			h.Add(key, val)
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			if !exists {
				h.Add(key, val)
			}
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			h.Set(key, val)
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			if exists {
				h.Set(key, val)
			}
		default:
			return errInvalidAppendAction
		}
	}
	return nil
}

// checkHeaderOptions reports an unknown append_action without applying
// anything.
func checkHeaderOptions(opts []*corev3.HeaderValueOption) error {
	for _, o := range opts {
		if o.GetAppend() != nil {
			continue
		}
		if _, ok := corev3.HeaderValueOption_HeaderAppendAction_name[int32(o.GetAppendAction())]; !ok {
			return errInvalidAppendAction
		}
	}
	return nil
}

// removeHeaders is OkHttpResponse.headers_to_remove: pseudo-headers and
// Host cannot be removed.
func removeHeaders(h http.Header, names []string) {
	for _, n := range names {
		if n == "" || strings.HasPrefix(n, ":") || strings.EqualFold(n, "host") {
			continue
		}
		h.Del(n)
	}
}

// deniedHeaders applies a denied (or error) response's headers to a local
// reply: every named header is first removed, then all are added (so a
// header can appear several times, e.g. Set-Cookie).
func deniedHeaders(h http.Header, opts []*corev3.HeaderValueOption) {
	for _, o := range opts {
		if k := o.GetHeader().GetKey(); validHeaderName(k) {
			h.Del(k)
		}
	}
	for _, o := range opts {
		hv := o.GetHeader()
		if k := hv.GetKey(); validHeaderName(k) {
			v := hv.GetValue()
			if v == "" && len(hv.GetRawValue()) > 0 {
				v = string(hv.GetRawValue())
			}
			h.Add(k, v)
		}
	}
}

// mutateQuery applies query_parameters_to_set and _to_remove to a raw
// query; changed reports whether anything was asked.
func mutateQuery(rawQuery string, set []*corev3.QueryParameter, remove []string) (string, bool) {
	if len(set) == 0 && len(remove) == 0 {
		return rawQuery, false
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil && q == nil {
		q = url.Values{}
	}
	for _, p := range set {
		q.Set(p.GetKey(), p.GetValue())
	}
	for _, k := range remove {
		q.Del(k)
	}
	return q.Encode(), true
}

// validHeaderName: an RFC 9110 token, not a pseudo-header.
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}
