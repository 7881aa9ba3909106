package reqpath

import (
	"errors"
	"strings"
	"testing"
)

func reasonOf(t *testing.T, err error) Reason {
	t.Helper()
	if err == nil {
		return ""
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not a *reqpath.Error", err, err)
	}
	return e.Reason
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		name      string
		raw       string
		wantPath  string
		wantQuery string
		reason    Reason
	}{
		// Already normal: returned as is.
		{name: "root", raw: "/", wantPath: "/"},
		{name: "simple", raw: "/api/v1/items", wantPath: "/api/v1/items"},
		{name: "trailing slash kept", raw: "/api/", wantPath: "/api/"},
		{name: "query", raw: "/api?x=1&y=%2F", wantPath: "/api", wantQuery: "x=1&y=%2F"},
		{name: "empty query", raw: "/api?", wantPath: "/api"},
		{name: "query with slashes and dots", raw: "/a?next=/../admin//x", wantPath: "/a", wantQuery: "next=/../admin//x"},
		{name: "sub-delims and colon", raw: "/a:b@c!$&'()*+,=~", wantPath: "/a:b@c!$&'()*+,=~"},
		{name: "dots inside segments", raw: "/a.b/...c", wantPath: "/a.b/...c"},
		{name: "segment starting with dots", raw: "/..a/.b", wantPath: "/..a/.b"},

		// Fragment dropped.
		{name: "fragment", raw: "/public#/../admin", wantPath: "/public"},
		{name: "query then fragment", raw: "/a?x=1#frag", wantPath: "/a", wantQuery: "x=1"},
		{name: "fragment hides query", raw: "/a#x?y", wantPath: "/a"},

		// Normalized, not an error.
		{name: "merge slashes", raw: "/a//b///c", wantPath: "/a/b/c"},
		{name: "double slash admin is a path, not a host (CVE-2026-26205)", raw: "//admin", wantPath: "/admin"},
		{name: "double slash with query", raw: "//evil.com/admin?x", wantPath: "/evil.com/admin", wantQuery: "x"},
		{name: "trailing double slash", raw: "/a//", wantPath: "/a/"},
		{name: "only slashes", raw: "////", wantPath: "/"},
		{name: "dot segment", raw: "/a/./b", wantPath: "/a/b"},
		{name: "dotdot segment", raw: "/public/../admin", wantPath: "/admin"},
		{name: "trailing dot", raw: "/a/b/.", wantPath: "/a/b/"},
		{name: "trailing dotdot", raw: "/a/b/..", wantPath: "/a/"},
		{name: "dotdot to root", raw: "/a/..", wantPath: "/"},
		{name: "dot at root", raw: "/.", wantPath: "/"},
		{name: "dotdot after merged slashes", raw: "/a//../b", wantPath: "/b"},
		{name: "CVE-2019-9901 style", raw: "/public/../../public/../admin", reason: ReasonPathTraversal},
		{name: "CVE-2019-9901 inside root", raw: "/static/../admin/users", wantPath: "/admin/users"},
		{name: "encoded dotdot", raw: "/public/%2e%2e/admin", wantPath: "/admin"},
		{name: "encoded dotdot upper", raw: "/public/%2E%2E/admin", wantPath: "/admin"},
		{name: "mixed encoded dotdot", raw: "/public/.%2e/admin", wantPath: "/admin"},
		{name: "encoded dot", raw: "/a/%2e/b", wantPath: "/a/b"},
		{name: "decode unreserved", raw: "/%61dmin/%7Euser/%2D%5F", wantPath: "/admin/~user/-_"},
		{name: "decode unreserved digit", raw: "/v%31", wantPath: "/v1"},
		{name: "keep reserved, uppercase hex", raw: "/a%3ab/c%3Ad/%25/%c3%a9", wantPath: "/a%3Ab/c%3Ad/%25/%C3%A9"},
		{name: "encoded percent not before hex kept", raw: "/a%25zz", wantPath: "/a%25zz"},
		{name: "encoded space kept", raw: "/a%20b", wantPath: "/a%20b"},

		// Errors.
		{name: "empty", raw: "", reason: ReasonBadPath},
		{name: "no leading slash", raw: "api", reason: ReasonBadPath},
		{name: "asterisk form", raw: "*", reason: ReasonBadPath},
		{name: "absolute form", raw: "http://evil/admin", reason: ReasonBadPath},
		{name: "query only", raw: "?x", reason: ReasonBadPath},
		{name: "NUL", raw: "/a\x00b", reason: ReasonBadPath},
		{name: "CR LF", raw: "/a\r\nX-Injected: 1", reason: ReasonBadPath},
		{name: "LF in query", raw: "/a?x=\n", reason: ReasonBadPath},
		{name: "tab", raw: "/a\tb", reason: ReasonBadPath},
		{name: "space", raw: "/a b", reason: ReasonBadPath},
		{name: "DEL", raw: "/a\x7f", reason: ReasonBadPath},
		{name: "non-ascii", raw: "/caf\xc3\xa9", reason: ReasonBadPath},
		{name: "envoy non-utf8 replacement char is fine", raw: "/a!", wantPath: "/a!"},
		{name: "backslash", raw: `/public\..\admin`, reason: ReasonBadPath},
		{name: "backslash alone", raw: `/a\b`, reason: ReasonBadPath},
		{name: "quote", raw: `/a"b`, reason: ReasonBadPath},
		{name: "angle brackets", raw: "/a<b>", reason: ReasonBadPath},
		{name: "brace and pipe", raw: "/a{b}|c", reason: ReasonBadPath},
		{name: "square brackets", raw: "/a[0]", reason: ReasonBadPath},
		{name: "caret and backtick", raw: "/a^b`c", reason: ReasonBadPath},
		{name: "encoded slash CVE-2021-29492", raw: "/public%2F..%2Fadmin", reason: ReasonEncodedSlash},
		{name: "encoded slash lower", raw: "/public%2f..%2fadmin", reason: ReasonEncodedSlash},
		{name: "encoded slash alone", raw: "/a%2Fb", reason: ReasonEncodedSlash},
		{name: "encoded backslash", raw: "/public%5C..%5Cadmin", reason: ReasonEncodedSlash},
		{name: "encoded backslash lower", raw: "/a%5cb", reason: ReasonEncodedSlash},
		{name: "encoded NUL", raw: "/a%00b", reason: ReasonBadPath},
		{name: "encoded CR", raw: "/a%0D%0Ab", reason: ReasonBadPath},
		{name: "encoded DEL", raw: "/a%7F", reason: ReasonBadPath},
		{name: "truncated percent", raw: "/a%4", reason: ReasonBadPercentEncoding},
		{name: "bare percent", raw: "/a%", reason: ReasonBadPercentEncoding},
		{name: "percent non-hex", raw: "/a%zz", reason: ReasonBadPercentEncoding},
		{name: "percent before query", raw: "/a%?x", reason: ReasonBadPercentEncoding},
		{name: "percent half hex", raw: "/a%2g", reason: ReasonBadPercentEncoding},
		{name: "dotdot at root", raw: "/..", reason: ReasonPathTraversal},
		{name: "dotdot at root with slash", raw: "/../admin", reason: ReasonPathTraversal},
		{name: "dotdot above root", raw: "/a/../../etc/passwd", reason: ReasonPathTraversal},
		{name: "encoded dotdot above root", raw: "/%2e%2e/etc/passwd", reason: ReasonPathTraversal},
		{name: "dotdot via merged slashes above root", raw: "//..//admin", reason: ReasonPathTraversal},
		{name: "tomcat dotdot param", raw: "/public/..;/admin", reason: ReasonPathParameter},
		{name: "tomcat dot param", raw: "/public/.;x/admin", reason: ReasonPathParameter},
		{name: "tomcat dotdot encoded param", raw: "/public/..%3B/admin", reason: ReasonPathTraversal},
		{name: "tomcat encoded dotdot param", raw: "/public/%2e%2e;/admin", reason: ReasonPathParameter},
		// Upstream interpretations Mandate refuses instead of guessing.
		{name: "servlet path parameter", raw: "/secrets;jsessionid=x/db-password", reason: ReasonPathParameter},
		{name: "empty path parameter", raw: "/secrets;/db", reason: ReasonPathParameter},
		{name: "parameter at end", raw: "/secrets/db;v=1", reason: ReasonPathParameter},
		{name: "encoded parameter", raw: "/secrets%3Bx/db", reason: ReasonPathParameter},
		{name: "encoded parameter lower", raw: "/secrets%3bx/db", reason: ReasonPathParameter},
		{name: "double encoding slash", raw: "/a%252Fb", reason: ReasonDoubleEncoding},
		{name: "double encoding letter", raw: "/%2573ecrets/x", reason: ReasonDoubleEncoding},
		{name: "trailing dot segment", raw: "/secrets./x", reason: ReasonTrailingDot},
		{name: "trailing dot last", raw: "/secrets.", reason: ReasonTrailingDot},
		{name: "encoded trailing dot", raw: "/secrets%2e/x", reason: ReasonTrailingDot},
		{name: "dots only segment", raw: "/a/.../b", reason: ReasonTrailingDot},
		{name: "too long", raw: "/" + strings.Repeat("a", MaxLength), reason: ReasonPathTooLong},
		{name: "too long by query", raw: "/a?" + strings.Repeat("a", MaxLength), reason: ReasonPathTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, query, err := Normalize(tt.raw)
			if got := reasonOf(t, err); got != tt.reason {
				t.Fatalf("Normalize(%.60q) reason = %q (%v), want %q", tt.raw, got, err, tt.reason)
			}
			if path != tt.wantPath || query != tt.wantQuery {
				t.Fatalf("Normalize(%q) = %q, %q; want %q, %q", tt.raw, path, query, tt.wantPath, tt.wantQuery)
			}
		})
	}
}

func TestNormalizeMaxLength(t *testing.T) {
	raw := "/" + strings.Repeat("a", MaxLength-1)
	if p, _, err := Normalize(raw); err != nil || p != raw {
		t.Fatalf("Normalize(%d bytes) = %d bytes, %v", len(raw), len(p), err)
	}
}

func TestNormalizeAllocs(t *testing.T) {
	for _, raw := range []string{"/api/v1/items/42", "/api/v1/items?limit=10&cursor=abc"} {
		allocs := testing.AllocsPerRun(100, func() {
			if _, _, err := Normalize(raw); err != nil {
				t.Fatal(err)
			}
		})
		if allocs != 0 {
			t.Errorf("Normalize(%q) allocates %v times, want 0", raw, allocs)
		}
	}
}

func TestNormalizeWithOptions(t *testing.T) {
	strip, fold := Options{StripParameters: true}, Options{FoldCase: true}
	for _, tc := range []struct {
		raw    string
		o      Options
		want   string
		reason Reason
	}{
		{raw: "/secrets;jsessionid=x/db-password", o: strip, want: "/secrets/db-password"},
		{raw: "/secrets;/db", o: strip, want: "/secrets/db"},
		{raw: "/a/b;v=1", o: strip, want: "/a/b"},
		{raw: "/;x/secrets", o: strip, want: "/secrets"},
		{raw: "/a/..;/admin", o: strip, reason: ReasonPathTraversal},
		{raw: "/a%3Bx/b", o: strip, reason: ReasonPathParameter},
		{raw: "/secrets.;x/b", o: strip, reason: ReasonTrailingDot},
		{raw: "/Secrets/DB", o: fold, want: "/secrets/db"},
		{raw: "/%53ecrets/%2f", o: fold, reason: ReasonEncodedSlash},
		{raw: "/%53ecrets/a%3Ab", o: fold, want: "/secrets/a%3Ab"},
		{raw: "/Secrets;x/DB", o: Options{StripParameters: true, FoldCase: true}, want: "/secrets/db"},
	} {
		got, _, err := NormalizeWith(tc.raw, tc.o)
		var e *Error
		if tc.reason != "" {
			if !errors.As(err, &e) || e.Reason != tc.reason {
				t.Errorf("NormalizeWith(%q, %+v) = %q, %v; want %s", tc.raw, tc.o, got, err, tc.reason)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NormalizeWith(%q, %+v) = %q, %v; want %q", tc.raw, tc.o, got, err, tc.want)
		}
	}
}

// TestFastPathMatchesSlowPath: the allocation-free path gives what full
// normalization gives.
func TestFastPathMatchesSlowPath(t *testing.T) {
	for _, p := range []string{"/", "/a", "/a/", "/a/b.c/..d", "/a:b@c", "/~x/y-z_"} {
		needs, err := scan(p, Options{})
		if err != nil || needs {
			t.Fatalf("scan(%q) = %v, %v", p, needs, err)
		}
		slow, err := normalizeSlow(p, Options{})
		if err != nil || slow != p {
			t.Fatalf("normalizeSlow(%q) = %q, %v", p, slow, err)
		}
	}
}

func BenchmarkNormalize(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Normalize("/api/v1/tools/search/invoke?limit=10"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNormalizeSlow(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Normalize("/api//v1/./tools/%73earch/../search/invoke?limit=10"); err != nil {
			b.Fatal(err)
		}
	}
}
