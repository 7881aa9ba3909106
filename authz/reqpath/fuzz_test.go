package reqpath

import (
	"path"
	"strings"
	"testing"
)

func FuzzNormalize(f *testing.F) {
	for _, s := range []string{
		"/", "/api/v1/items?x=1", "//admin", "/a/./b/../c", "/public/%2e%2e/admin",
		"/public%2F..%2Fadmin", "/a%5Cb", "/..", "/a/b/..", "/a%zz", "/a\\b", "/a\r\n",
		"/..;/admin", "/%61%62%3b%c3%a9", "/a#frag?x", "/a?b#c", "*", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		p, q, err := Normalize(raw)
		if err != nil {
			if reasonOf(t, err) == "" || p != "" || q != "" {
				t.Fatalf("Normalize(%q) = %q, %q, %v", raw, p, q, err)
			}
			return
		}
		switch {
		case !strings.HasPrefix(p, "/"),
			strings.Contains(p, "//"),
			strings.Contains(p, "/./"),
			strings.Contains(p, "/../"),
			strings.HasSuffix(p, "/.."),
			strings.HasSuffix(p, "/."),
			strings.ContainsAny(p, "\\?# \x00\r\n"):
			t.Fatalf("Normalize(%q) = %q: not normal", raw, p)
		}
		if len(p) > len(raw) || len(q) > len(raw) {
			t.Fatalf("Normalize(%q) grew: %q, %q", raw, p, q)
		}
		for i := 0; i < len(p); i++ {
			if p[i] != '%' {
				continue
			}
			h := p[i+1 : i+3]
			if h != strings.ToUpper(h) || h == "2F" || h == "5C" {
				t.Fatalf("Normalize(%q) = %q: bad encoding %%%s", raw, p, h)
			}
			if b := unhex(h[0])<<4 | unhex(h[1]); isUnreserved(b) {
				t.Fatalf("Normalize(%q) = %q: unreserved %%%s left encoded", raw, p, h)
			}
		}
		// Idempotence.
		p2, q2, err := Normalize(p)
		if err != nil || p2 != p || q2 != "" {
			t.Fatalf("Normalize(Normalize(%q)) = %q, %q, %v; want %q", raw, p2, q2, err, p)
		}
		if q != "" {
			if p3, q3, err := Normalize(p + "?" + q); err != nil || p3 != p || q3 != q {
				t.Fatalf("Normalize(%q) = %q, %q, %v; want %q, %q", p+"?"+q, p3, q3, err, p, q)
			}
		}
		// Differential against path.Clean when nothing was percent-encoded
		// (Clean drops trailing slashes, which Normalize keeps).
		rawPath, _, _ := strings.Cut(raw, "?")
		rawPath, _, _ = strings.Cut(rawPath, "#")
		if !strings.Contains(rawPath, "%") {
			if want := strings.TrimSuffix(path.Clean(rawPath), "/"); strings.TrimSuffix(p, "/") != want {
				t.Fatalf("Normalize(%q) = %q, path.Clean gives %q", raw, p, want)
			}
		}
	})
}

func FuzzGRPC(f *testing.F) {
	f.Add("/pkg.S/M", "application/grpc")
	f.Add("/pkg.S/M/x", "application/grpc+proto")
	f.Add("//M", "application/grpc-web")
	f.Fuzz(func(t *testing.T, p, ct string) {
		s, m, ok := GRPC(p, ct)
		if !ok {
			if s != "" || m != "" {
				t.Fatalf("GRPC(%q, %q) = %q, %q, false", p, ct, s, m)
			}
			return
		}
		if "/"+s+"/"+m != p || !strings.HasPrefix(strings.ToLower(ct), "application/grpc") {
			t.Fatalf("GRPC(%q, %q) = %q, %q", p, ct, s, m)
		}
		if np, _, err := Normalize(p); err != nil || np != p {
			t.Fatalf("GRPC accepted %q which is not a normal path (%q, %v)", p, np, err)
		}
	})
}
