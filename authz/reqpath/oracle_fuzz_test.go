package reqpath

import (
	"strings"
	"testing"
)

// The upstream oracle: under a policy that denies /secrets (and what is
// below it) and allows the rest, Mandate's decision for a path must never
// be more permissive than its decision for any way a common upstream may
// read that path. Each upstream reads a path by percent-decoding it once
// and then, depending on the server, some of: decoding once more, cutting
// ';' parameters from segments (servlet containers), folding case
// (case-insensitive file systems; only on routes labelled so), stripping
// trailing dots from segments (Windows), merging "//" and removing dot
// segments (RFC 3986).

const (
	stepDecodeAgain = 1 << iota
	stepStripParams
	stepFoldCase
	stepTrailingDots
	stepParamsFirst // cut ';' parameters before the first decode (Tomcat)
	stepCount       = iota
)

// serve returns the path an upstream applying steps serves raw as, and
// false when such an upstream would refuse the request.
func serve(raw string, steps int) (string, bool) {
	p := raw
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		p = p[:i]
	}
	if steps&stepParamsFirst != 0 {
		p = stripParams(p)
	}
	p, ok := decodeAll(p)
	if !ok {
		return "", false
	}
	if steps&stepDecodeAgain != 0 {
		if p, ok = decodeAll(p); !ok {
			return "", false
		}
	}
	if steps&stepStripParams != 0 {
		p = stripParams(p)
	}
	if steps&stepFoldCase != 0 {
		p = strings.ToLower(p)
	}
	p = strings.ReplaceAll(p, "\\", "/") // Windows and some proxies
	if steps&stepTrailingDots != 0 {
		segs := strings.Split(p, "/")
		for i, s := range segs {
			if s != "." && s != ".." {
				segs[i] = strings.TrimRight(s, ".")
			}
		}
		p = strings.Join(segs, "/")
	}
	return removeDots(p), true
}

func decodeAll(p string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] != '%' {
			b.WriteByte(p[i])
			continue
		}
		if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
			return "", false
		}
		b.WriteByte(unhex(p[i+1])<<4 | unhex(p[i+2]))
		i += 2
	}
	return b.String(), true
}

func stripParams(p string) string {
	segs := strings.Split(p, "/")
	for i, s := range segs {
		if j := strings.IndexByte(s, ';'); j >= 0 {
			segs[i] = s[:j]
		}
	}
	return strings.Join(segs, "/")
}

// removeDots merges slashes and applies RFC 3986 dot removal, clamping
// ".." at the root as servers do.
func removeDots(p string) string {
	var out []string
	for _, s := range strings.Split(p, "/") {
		switch s {
		case "", ".":
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

func secret(p string) bool { return p == "/secrets" || strings.HasPrefix(p, "/secrets/") }

func FuzzUpstreamOracle(f *testing.F) {
	for _, s := range []string{
		"/secrets/db", "/config/a", "/secrets;jsessionid=x/db", "/secrets;/db", "/secrets%3Bx/db",
		"/%2573ecrets/db", "/secrets./db", "/secrets%2e/db", "/SECRETS/db", "/%53ecrets/db",
		"/public/..;/secrets/db", "/a/%2e%2e/secrets", "//secrets/db", "/secrets%252Fdb", "/x/.../secrets",
		"/secrets%5Cdb", "/a/..%2fsecrets", "/secrets..;/db", "/;x/secrets/db",
	} {
		f.Add(s, false, false)
		f.Add(s, true, true)
	}
	f.Fuzz(func(t *testing.T, raw string, stripLabel, foldLabel bool) {
		o := Options{StripParameters: stripLabel, FoldCase: foldLabel}
		p, _, err := NormalizeWith(raw, o)
		if err != nil || secret(p) {
			return // Mandate denies: nothing can be more restrictive
		}
		for steps := 0; steps < 1<<stepCount; steps++ {
			if steps&stepFoldCase != 0 && !foldLabel {
				continue // a case-insensitive upstream must be labelled so
			}
			served, ok := serve(raw, steps)
			if ok && secret(served) {
				t.Fatalf("Mandate allows %q (decided as %q, options %+v) but an upstream (steps %05b) serves it as %q",
					raw, p, o, steps, served)
			}
		}
	})
}
