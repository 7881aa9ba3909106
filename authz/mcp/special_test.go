package mcp

import (
	"strings"
	"testing"
)

// indexSpecialRef is indexSpecial one byte at a time.
func indexSpecialRef(s string) int {
	for i := 0; i < len(s); i++ {
		if isSpecial(s[i]) {
			return i
		}
	}
	return len(s)
}

// TestIndexSpecial places every byte value at every position of strings
// up to 100 bytes (and at the ends of a 4 KiB one) and checks the block
// scan finds exactly the first special byte, also with a second one
// behind it.
func TestIndexSpecial(t *testing.T) {
	if !haveSpecialBlocks {
		t.Skip("no block scan on this CPU: indexSpecial is not used")
	}
	check := func(s string) {
		t.Helper()
		if got, want := indexSpecial(s), indexSpecialRef(s); got != want {
			t.Fatalf("indexSpecial(%q) = %d, want %d", s, got, want)
		}
	}
	for n := 0; n <= 100; n++ {
		base := []byte(strings.Repeat("a~ Z09", 20)[:n])
		check(string(base))
		for at := 0; at < n; at++ {
			for c := 0; c < 256; c++ {
				b := append([]byte(nil), base...)
				b[at] = byte(c)
				check(string(b))
				if at+5 < n {
					b[at+5] = '"'
					check(string(b))
				}
			}
		}
	}
	long := []byte(strings.Repeat("x", 4096))
	for _, at := range []int{0, 31, 32, 63, 4063, 4064, 4095} {
		for _, c := range []byte{'"', '\\', 0, 0x1f, 0x7f, 0x80, 0xff} {
			b := append([]byte(nil), long...)
			b[at] = c
			check(string(b))
			check(string(b[1:]))
		}
	}
}

// FuzzStrEquivalent checks that the two string scanners decide every
// input alike: the same span, escapes, refusal, reason and offset.
func FuzzStrEquivalent(f *testing.F) {
	for _, s := range []string{`"abc"`, `"a\"b"`, `"\ud83d\ude00"`, `"\ud83d"`, "\"\xff\"", "\"\xe2\x22\"", "\"tab\there\"",
		`"` + strings.Repeat("frobnicator overflow; ", 40) + `\n"`, `"no end`, `"\`, `"é` + strings.Repeat("z", 40) + "\x01\"",
		"\"" + strings.Repeat("日本語", 30) + "\"", `"\u00e9\/\b\f\n\r\t\\"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !strings.HasPrefix(s, `"`) {
			s = `"` + s
		}
		a, b := scanner{s: s}, scanner{s: s}
		as, ae, aesc, aerr := a.strBlocks()
		bs, be, besc, berr := b.strPortable()
		if as != bs || ae != be || aesc != besc || a.i != b.i || (aerr == nil) != (berr == nil) {
			t.Fatalf("%q: blocks (%d %d %v %d %v), portable (%d %d %v %d %v)", s, as, ae, aesc, a.i, aerr, bs, be, besc, b.i, berr)
		}
		if aerr != nil && *aerr.(*Error) != *berr.(*Error) {
			t.Fatalf("%q: blocks %v, portable %v", s, aerr, berr)
		}
	})
}

func BenchmarkStr4K(b *testing.B) {
	s := `"` + strings.Repeat("This change fixes the frobnicator when the widget count overflows. ", 58) + `"`
	b.SetBytes(int64(len(s)))
	b.Run("blocks", func(b *testing.B) {
		if !haveSpecialBlocks {
			b.Skip("no block scan on this CPU")
		}
		for b.Loop() {
			sc := scanner{s: s}
			if _, _, _, err := sc.strBlocks(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("portable", func(b *testing.B) {
		for b.Loop() {
			sc := scanner{s: s}
			if _, _, _, err := sc.strPortable(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzNameKey checks that names whose keys differ never fold together:
// the key only skips comparisons sameName would answer false.
func FuzzNameKey(f *testing.F) {
	for _, p := range [][2]string{{"name", "NAME"}, {"kind", "\u212aind"}, {"s", "\u017f"}, {"arguments", "ARGUMENTZ"},
		{"abcdefgh1", "ABCDEFGH2"}, {"a\xff", "A\xff"}, {"", ""}, {"a", "b"}, {"@", "`"}, {"[", "{"}} {
		f.Add(p[0], p[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		if keyOf(a).differs(keyOf(b)) && strings.EqualFold(a, b) {
			t.Fatalf("keys of %q and %q differ, but they fold together", a, b)
		}
	})
}

// TestPrefetch: Prefetch reads nothing, so no body, however short, long
// or placed, makes it fault; and it leaves the body unchanged.
func TestPrefetch(t *testing.T) {
	big := strings.Repeat("x", 3*maxPrefetch+17)
	for _, s := range []string{"", "{", big[:63], big[1:65], big[5 : maxPrefetch+9], big} {
		before := strings.Clone(s)
		Prefetch(s)
		if s != before {
			t.Fatal("Prefetch changed its body")
		}
	}
}
