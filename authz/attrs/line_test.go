package attrs

import (
	"testing"
	"unsafe"

	"github.com/mandate-dev/mandate/authz/reqpath"
)

// direct is what lineMemo.normalize must return: the functions it saves
// calling.
func direct(rawPath, rawHost string, o reqpath.Options) (string, string, string) {
	path, _, err := reqpath.NormalizeWith(rawPath, o)
	if err != nil {
		return "", "", ReasonOf(err)
	}
	host, err := Host(rawHost)
	if err != nil {
		return "", "", ReasonBadHost
	}
	return path, host, ""
}

func checkLine(t *testing.T, m *lineMemo, rawPath, rawHost string, o reqpath.Options) {
	t.Helper()
	path, host, err := normalizeLine(m, rawPath, rawHost, o)
	reason := ""
	if err != nil {
		reason = ReasonOf(err)
	}
	wp, wh, wr := direct(rawPath, rawHost, o)
	if path != wp || host != wh || reason != wr {
		t.Fatalf("normalize(%q, %q, %+v) = %q, %q, %q; want %q, %q, %q", rawPath, rawHost, o, path, host, reason, wp, wh, wr)
	}
}

// TestLineMemo: after a path and host are remembered, every request that
// differs from them in path, host or route options gets what the
// normalizers say, not the remembered answer.
func TestLineMemo(t *testing.T) {
	strip, fold := reqpath.Options{StripParameters: true}, reqpath.Options{FoldCase: true}
	seen := []struct {
		path, host string
		o          reqpath.Options
	}{
		{"/tickets/1", "tickets.internal", reqpath.Options{}},
		{"/Secrets/x", "h", fold},
		{"/a;x/b", "h:8443", strip},
	}
	probes := []struct {
		path, host string
		o          reqpath.Options
	}{
		{"/tickets/1", "tickets.internal", reqpath.Options{}},
		{"/tickets/1", "tickets.internal:80", reqpath.Options{}},
		{"/tickets/1", "tickets.internal:80:81", reqpath.Options{}},
		{"/tickets/1", "Tickets.Internal", reqpath.Options{}},
		{"/tickets/1", "tickets.externa", reqpath.Options{}},
		{"/tickets/1", "tickets.internat", reqpath.Options{}},
		{"/tickets/1", "tickets.intern@l", reqpath.Options{}},
		{"/tickets/2", "tickets.internal", reqpath.Options{}},
		{"/tickets/1", "tickets.internal", fold},
		{"/tickets/1", "tickets.internal", strip},
		{"/tickets/1/", "tickets.internal", reqpath.Options{}},
		{"/tickets/./1", "tickets.internal", reqpath.Options{}},
		{"/Secrets/x", "h", reqpath.Options{}},
		{"/Secrets/x", "h", fold},
		{"/a;x/b", "h:8443", reqpath.Options{}},
		{"/a;x/b", "h:8443", strip},
		{"/a;x/b", "u@h:8443", strip},
		{"/secrets./x", "h", reqpath.Options{}},
		{"/%2525", "h", reqpath.Options{}},
		{"", "h", reqpath.Options{}},
	}
	m := newLineMemo()
	for _, p := range probes {
		for _, s := range seen {
			// Each twice: remembered from the second sighting.
			checkLine(t, m, s.path, s.host, s.o)
			checkLine(t, m, s.path, s.host, s.o)
			if sl, _ := lineSlot(m, s.path, s.host); sl.Load() == nil {
				t.Fatalf("%q %q not remembered", s.path, s.host)
			}
			checkLine(t, m, p.path, p.host, p.o)
			checkLine(t, m, p.path, p.host, p.o)
		}
	}
}

// FuzzLineMemo: a remembered path and host never change the answer for
// another.
func FuzzLineMemo(f *testing.F) {
	f.Add("/tickets/1", "tickets.internal", "/tickets/1", "tickets.internal:80", false, false)
	f.Add("/a;x/b", "h", "/a;x/b", "h", true, false)
	f.Add("/A/b", "H", "/A/b", "h", false, true)
	f.Fuzz(func(t *testing.T, p1, h1, p2, h2 string, strip, fold bool) {
		m := newLineMemo()
		for _, o := range []reqpath.Options{{}, {StripParameters: strip, FoldCase: fold}} {
			for range 2 {
				checkLine(t, m, p1, h1, o)
			}
			for range 2 {
				checkLine(t, m, p2, h2, o)
			}
			checkLine(t, m, p1, h1, reqpath.Options{StripParameters: !strip})
			checkLine(t, m, p2, h2, reqpath.Options{FoldCase: !fold})
		}
	})
}

// TestLineMemoCollision: an entry found in a request's slot (another
// path and host hashing there) is used only for its own exact inputs.
func TestLineMemoCollision(t *testing.T) {
	pairs := [][2]string{{"/tickets/1", "/secrets/1"}, {"/a", "/a/"}, {"/x;y", "/x"}}
	for _, p := range pairs {
		m := newLineMemo()
		checkLine(t, m, p[0], "h", reqpath.Options{StripParameters: true})
		checkLine(t, m, p[0], "h", reqpath.Options{StripParameters: true})
		s0, _ := lineSlot(m, p[0], "h")
		e := s0.Load()
		if e == nil {
			t.Fatal("a path seen twice was not remembered")
		}
		s1, _ := lineSlot(m, p[1], "h")
		s1.Store(e)
		s2, _ := lineSlot(m, p[0], "i")
		s2.Store(e)
		checkLine(t, m, p[1], "h", reqpath.Options{StripParameters: true})
		checkLine(t, m, p[0], "i", reqpath.Options{StripParameters: true})
		checkLine(t, m, p[0], "h", reqpath.Options{})
	}
}

// TestNewLineEntryAllocs: an entry and the copy of its strings are two
// allocations (the strings are copied once, not concatenated and then
// cloned), and the entry holds copies, not the caller's strings.
func TestNewLineEntryAllocs(t *testing.T) {
	rawPath, rawHost := "/v1/Tickets/42;v=1", "API.example.com:443"
	path, host := "/v1/tickets/42", "api.example.com"
	if n := testing.AllocsPerRun(100, func() {
		_ = newLineEntry(rawPath, rawHost, reqpath.Options{}, path, host)
	}); n != 2 {
		t.Fatalf("newLineEntry: %v allocations, want 2", n)
	}
	// One non-empty string, which a concatenation would return as is.
	e := newLineEntry(rawPath, "", reqpath.Options{}, "", "")
	if e.rawPath != rawPath || e.rawHost != "" || e.path != "" || e.host != "" {
		t.Fatalf("entry %+v", e)
	}
	if unsafe.StringData(e.rawPath) == unsafe.StringData(rawPath) {
		t.Fatal("the entry aliases the caller's path")
	}
}
