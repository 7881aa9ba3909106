package reqpath

import "testing"

func TestGRPC(t *testing.T) {
	tests := []struct {
		name, path, ct  string
		service, method string
		ok              bool
	}{
		{"plain", "/mandate.v1.Admin/Revoke", "application/grpc", "mandate.v1.Admin", "Revoke", true},
		{"no package", "/Greeter/SayHello", "application/grpc", "Greeter", "SayHello", true},
		{"proto suffix", "/pkg.S/M", "application/grpc+proto", "pkg.S", "M", true},
		{"params", "/pkg.S/M", "application/grpc; charset=utf-8", "pkg.S", "M", true},
		{"case-insensitive", "/pkg.S/M", "Application/GRPC", "pkg.S", "M", true},
		{"grpc-web", "/pkg.S/M", "application/grpc-web+proto", "pkg.S", "M", true},
		{"grpc-web-text", "/pkg.S/M", "application/grpc-web-text", "pkg.S", "M", true},
		{"underscores digits", "/a_1.B_2/m_3", "application/grpc", "a_1.B_2", "m_3", true},
		// The content type does not let a package-qualified call dodge
		// grpc rules: Connect GET, merged content types, grpc-web.
		{"json content type (Connect unary)", "/pkg.S/M", "application/json", "pkg.S", "M", true},
		{"grpc lookalike", "/pkg.S/M", "application/grpcx", "pkg.S", "M", true},
		{"empty content type (Connect GET)", "/pkg.S/M", "", "pkg.S", "M", true},
		{"merged content type", "/pkg.S/M", "text/plain,application/grpc", "pkg.S", "M", true},
		{"connect proto", "/pkg.S/M", "application/connect+proto", "pkg.S", "M", true},
		{"no package, merged grpc", "/Greeter/SayHello", "text/plain,application/grpc", "Greeter", "SayHello", true},
		{"no package, connect", "/Greeter/SayHello", "application/connect+json", "Greeter", "SayHello", true},
		{"no package, not rpc", "/users/list", "application/json", "", "", false},
		{"no package, no content type", "/users/list", "", "", "", false},
		{"one segment", "/pkg.S", "application/grpc", "", "", false},
		{"three segments", "/pkg.S/M/x", "application/grpc", "", "", false},
		{"trailing slash", "/pkg.S/M/", "application/grpc", "", "", false},
		{"empty method", "/pkg.S/", "application/grpc", "", "", false},
		{"empty service", "//M", "application/grpc", "", "", false},
		{"no leading slash", "pkg.S/M", "application/grpc", "", "", false},
		{"query", "/pkg.S/M?x", "application/grpc", "", "", false},
		{"empty package part", "/pkg..S/M", "application/grpc", "", "", false},
		{"leading dot", "/.S/M", "application/grpc", "", "", false},
		{"trailing dot", "/S./M", "application/grpc", "", "", false},
		{"digit first", "/1S/M", "application/grpc", "", "", false},
		{"dash", "/pkg-x.S/M", "application/grpc", "", "", false},
		{"percent", "/pkg.S/M%41", "application/grpc", "", "", false},
		{"dot in method", "/pkg.S/M.x", "application/grpc", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, m, ok := GRPC(tt.path, tt.ct)
			if s != tt.service || m != tt.method || ok != tt.ok {
				t.Fatalf("GRPC(%q, %q) = %q, %q, %v; want %q, %q, %v", tt.path, tt.ct, s, m, ok, tt.service, tt.method, tt.ok)
			}
		})
	}
}
