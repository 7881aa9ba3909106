package identity

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// refValid is an independent statement of SPIFFE-ID.md's grammar for a
// workload ID, built from strings functions.
func refValid(s string) bool {
	const (
		tdChars   = "abcdefghijklmnopqrstuvwxyz0123456789.-_"
		pathChars = tdChars + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	)
	if len(s) > MaxIDLength {
		return false
	}
	rest, ok := strings.CutPrefix(s, "spiffe://")
	if !ok {
		return false
	}
	td, path, ok := strings.Cut(rest, "/")
	if !ok || td == "" || len(td) > MaxTrustDomainLength || strings.Trim(td, tdChars) != "" {
		return false
	}
	for _, seg := range strings.Split(path, "/") {
		if seg == "" || seg == "." || seg == ".." || strings.Trim(seg, pathChars) != "" {
			return false
		}
	}
	return true
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"spiffe://example.org/ns/a/sa/b", "spiffe://example.org", "spiffe://example.org/",
		"spiffe://Example.org/a", "spiffe://a:1/b", "spiffe://u@a/b", "spiffe://a/%41",
		"spiffe://a/b/../c", "spiffe://a/b//c", "spiffe://a/b?c", "spiffe://a/b#c", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseID(s)
		if want := refValid(s); want != (err == nil) {
			t.Fatalf("ParseID(%q) err = %v, reference grammar says valid=%v", s, err, want)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Reason == "" || !id.IsZero() {
				t.Fatalf("ParseID(%q) = %q, %v: want zero ID and *Error with a reason", s, id, err)
			}
			return
		}
		if id.String() != s {
			t.Fatalf("ParseID(%q) = %q", s, id)
		}
		if _, err := spiffeid.FromString(s); err != nil {
			t.Fatalf("go-spiffe rejects %q which ParseID accepted: %v", s, err)
		}
	})
}

// formatXFCC writes elements back in Envoy's format, every value quoted.
func formatXFCC(elems []XFCCElement) string {
	var b strings.Builder
	q := func(k, v string) {
		if b.Len() > 0 && !strings.HasSuffix(b.String(), ",") {
			b.WriteByte(';')
		}
		b.WriteString(k + `="` + strings.ReplaceAll(v, `"`, `\"`) + `"`)
	}
	for i, el := range elems {
		if i > 0 {
			b.WriteByte(',')
		}
		n := b.Len()
		for _, kv := range [][2]string{{"By", el.By}, {"Hash", el.Hash}, {"Cert", el.Cert}, {"Chain", el.Chain}, {"Subject", el.Subject}} {
			if kv[1] != "" {
				q(kv[0], kv[1])
			}
		}
		for _, u := range el.URI {
			q("URI", u)
		}
		for _, d := range el.DNS {
			q("DNS", d)
		}
		if b.Len() == n { // element had only empty singletons
			q("Hash", "")
		}
	}
	return b.String()
}

func normalizeEmpty(elems []XFCCElement) {
	for i := range elems {
		if elems[i].URI != nil && len(elems[i].URI) == 0 {
			elems[i].URI = nil
		}
	}
}

func FuzzParseXFCC(f *testing.F) {
	for _, s := range []string{
		`By=spiffe://a/p;Hash=ab;Subject="/C=US/CN=x";URI=spiffe://a/q`,
		`URI=spiffe://a/q,By=spiffe://b/p;URI=spiffe://a/r;DNS=x;DNS=y`,
		`Subject="CN=\"q\"\, x\\";URI="a,b;c=d"`,
		`URI="unterminated`, `URI=a,,`, `=;`, `Cert="%2D%2D"`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		elems, err := ParseXFCC(s)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || (e.Reason != ReasonBadXFCC && e.Reason != ReasonXFCCTooLong) || elems != nil {
				t.Fatalf("ParseXFCC(%q) = %v, %v", s, elems, err)
			}
			return
		}
		if len(elems) == 0 || len(elems) > MaxXFCCElements || len(s) > MaxXFCCLength {
			t.Fatalf("ParseXFCC(%q) accepted %d elements from %d bytes", s, len(elems), len(s))
		}
		if n := strings.Count(s, ","); len(elems) > n+1 {
			t.Fatalf("ParseXFCC(%q): %d elements from %d commas", s, len(elems), n)
		}
		// Round trip: what we parsed, written back quoted, parses the same.
		again, err := ParseXFCC(formatXFCC(elems))
		if err != nil && reasonOf(t, err) != ReasonXFCCTooLong {
			t.Fatalf("re-parse of %q (from %q): %v", formatXFCC(elems), s, err)
		}
		if err == nil {
			normalizeEmpty(elems)
			normalizeEmpty(again)
			// An element with only empty singleton values is written back
			// as Hash="" and parses the same.
			if !reflect.DeepEqual(elems, again) {
				t.Fatalf("round trip of %q:\n got  %+v\n want %+v", s, again, elems)
			}
		}
	})
}

func FuzzCaller(f *testing.F) {
	f.Add(agentID, "", false)
	f.Add(proxyID, "By="+proxyID+";URI="+agentID, false)
	f.Add(proxyID, "By="+proxyID+";URI="+agentID, true)
	f.Add(proxyID, "URI=spiffe://evil.org/x", false)
	f.Add(proxyID, `URI="`+agentID+`";URI=x`, false)
	f.Add(agentID, "URI=spiffe://example.org/admin", false)
	f.Add("spiffe://example.org", "", false)
	f.Fuzz(func(t *testing.T, principal, xfcc string, requireBy bool) {
		r := newTestResolver(t, requireBy)
		h := map[string]string{XFCCHeader: xfcc}
		id, err := r.Caller(peer(principal), h)
		if err != nil {
			if reasonOf(t, err) == "" || !id.IsZero() {
				t.Fatalf("Caller(%q, %q) = %q, %v", principal, xfcc, id, err)
			}
		} else {
			if _, perr := ParseID(id.String()); perr != nil {
				t.Fatalf("Caller returned invalid ID %q: %v", id, perr)
			}
			if td := id.TrustDomain().Name(); td != "example.org" && td != "partner.net" {
				t.Fatalf("Caller returned ID %q in an untrusted domain", id)
			}
		}
		if principal == proxyID {
			return
		}
		// Not a trusted proxy: the XFCC header must change nothing.
		id2, err2 := r.Caller(peer(principal), nil)
		if id != id2 || reasonOf(t, err) != reasonOf(t, err2) {
			t.Fatalf("XFCC %q changed the caller of non-proxy %q: %q,%v vs %q,%v", xfcc, principal, id, err, id2, err2)
		}
		if err == nil && id.String() != principal {
			t.Fatalf("Caller(%q) = %q", principal, id)
		}
	})
}
