package reqpath

import "strings"

// GRPC reports whether a request is a gRPC call and, if so, its service
// and method. contentType must be application/grpc (optionally +proto,
// +json, ...; parameters after ';'; or the grpc-web variants), compared
// case-insensitively. path must be exactly "/package.Service/Method": two
// segments, the service a dot-separated list of proto identifiers
// ([A-Za-z_][A-Za-z0-9_]*), the method one identifier; no query. Pass the
// path Normalize returned.
func GRPC(path string, contentType string) (service, method string, ok bool) {
	if !isGRPCContentType(contentType) || len(path) < 4 || path[0] != '/' {
		return "", "", false
	}
	service, method, found := strings.Cut(path[1:], "/")
	if !found || !isProtoFullName(service) || !isProtoIdent(method) {
		return "", "", false
	}
	return service, method, true
}

func isGRPCContentType(ct string) bool {
	const prefix = "application/grpc"
	if len(ct) < len(prefix) || !strings.EqualFold(ct[:len(prefix)], prefix) {
		return false
	}
	rest := ct[len(prefix):]
	for _, web := range []string{"-web-text", "-web"} {
		if len(rest) >= len(web) && strings.EqualFold(rest[:len(web)], web) {
			rest = rest[len(web):]
			break
		}
	}
	return rest == "" || rest[0] == '+' || rest[0] == ';'
}

func isProtoFullName(s string) bool {
	for {
		ident, rest, more := strings.Cut(s, ".")
		if !isProtoIdent(ident) {
			return false
		}
		if !more {
			return true
		}
		s = rest
	}
}

func isProtoIdent(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
