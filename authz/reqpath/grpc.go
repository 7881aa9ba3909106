package reqpath

import "strings"

// GRPC reports whether a request is a gRPC call and, if so, its service
// and method. path must be exactly "/package.Service/Method": two
// segments, the service a dot-separated list of proto identifiers
// ([A-Za-z_][A-Za-z0-9_]*), the method one identifier. Pass the path
// Normalize returned (the query, such as Connect's GET form
// "?connect=v1&encoding=proto&message=...", is not part of it).
//
// The content type does not decide: a server that serves gRPC also
// serves the same method to Connect's GET form, to grpc-web and under a
// merged or duplicated content-type ("text/plain,application/grpc"), so
// a path of this shape whose service is package-qualified is a gRPC call
// whatever the content type, and grpc rules (deny ones included) meet it.
// A service without a package ("/Greeter/SayHello") is a gRPC call only
// when some content-type value names grpc or connect.
func GRPC(path string, contentType string) (service, method string, ok bool) {
	if len(path) < 4 || path[0] != '/' {
		return "", "", false
	}
	service, method, found := strings.Cut(path[1:], "/")
	if !found || !isProtoFullName(service) || !isProtoIdent(method) {
		return "", "", false
	}
	if strings.IndexByte(service, '.') < 0 && !mentionsRPC(contentType) {
		return "", "", false
	}
	return service, method, true
}

// mentionsRPC reports whether a (possibly merged) content-type names a
// gRPC or Connect encoding anywhere, case-insensitively.
func mentionsRPC(ct string) bool {
	for i := 0; i+4 <= len(ct); i++ {
		switch {
		case strings.EqualFold(ct[i:i+4], "grpc"):
			return true
		case i+7 <= len(ct) && strings.EqualFold(ct[i:i+7], "connect"):
			return true
		}
	}
	return false
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
