package mcp

import (
	"strings"
	"unicode/utf8"
)

// scanner validates JSON text strictly (RFC 8259 with no extensions):
// valid UTF-8 everywhere, no lone surrogates in \u escapes, no control
// characters in strings, no duplicate names in any object (compared after
// unescaping and ignoring case: Go's encoding/json, among others, matches
// member names case-insensitively, so {"name":"a","NAME":"b"} names two
// tools to two parsers), nesting at most maxDepth, nothing after the
// value but whitespace. It allocates only for objects of many members and for names
// written with escapes.
type scanner struct {
	s        string
	i        int
	maxDepth int
	// buf holds the unescaped member names written with escapes.
	buf []byte
	// p collects the members Parse reads (modes memberTop, memberParams).
	p parsed
}

// nameRef is a member name: s[start:end], or buf[start:end] when inBuf.
type nameRef struct {
	start, end int
	inBuf      bool
	key        nameKey
}

// nameKey is what tells most pairs of names apart without comparing
// them: whether a name is all ASCII, its length and its first 8 bytes in
// ASCII lower case. Two ASCII names fold together (strings.EqualFold)
// only when their keys are equal; names with non-ASCII bytes can fold
// together at different lengths, so their keys tell nothing.
type nameKey struct {
	ascii bool
	n     int
	low8  uint64
}

// keyOf returns name's nameKey.
func keyOf(name string) nameKey {
	k := nameKey{ascii: true, n: len(name)}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 0x80 {
			return nameKey{}
		}
		if i < 8 {
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			k.low8 |= uint64(c) << (8 * i)
		}
	}
	return k
}

// differs reports whether the names of keys k and o cannot be equal under
// strings.EqualFold (false: they may be).
func (k nameKey) differs(o nameKey) bool {
	return k.ascii && o.ascii && (k.n != o.n || k.low8 != o.low8)
}

// linearNames is how many members an object may have before duplicate
// detection switches from comparing with each earlier name to a map.
const linearNames = 16

func (sc *scanner) fail(r Reason) error { return &Error{Reason: r, Offset: sc.i} }

func (sc *scanner) ws() {
	for sc.i < len(sc.s) {
		switch sc.s[sc.i] {
		case ' ', '\t', '\n', '\r':
			sc.i++
		default:
			return
		}
	}
}

// value scans one value at nesting depth (the value itself counts).
func (sc *scanner) value(depth int) error {
	sc.ws()
	if sc.i >= len(sc.s) {
		return sc.fail(ReasonMalformed)
	}
	switch c := sc.s[sc.i]; {
	case c == '{':
		return sc.object(depth + 1)
	case c == '[':
		return sc.array(depth + 1)
	case c == '"':
		_, _, _, err := sc.str()
		return err
	case c == 't':
		return sc.lit("true")
	case c == 'f':
		return sc.lit("false")
	case c == 'n':
		return sc.lit("null")
	case c == '-' || c >= '0' && c <= '9':
		return sc.number()
	case c >= 0x80:
		return sc.fail(nonASCIIReason(sc.s[sc.i:]))
	}
	return sc.fail(ReasonMalformed)
}

// nonASCIIReason tells invalid UTF-8 from a stray non-ASCII
// character outside a string (both are refused).
func nonASCIIReason(rest string) Reason {
	if r, _ := utf8.DecodeRuneInString(rest); r == utf8.RuneError {
		return ReasonBadUTF8
	}
	return ReasonMalformed
}

func (sc *scanner) lit(word string) error {
	if len(sc.s)-sc.i < len(word) || sc.s[sc.i:sc.i+len(word)] != word {
		return sc.fail(ReasonMalformed)
	}
	sc.i += len(word)
	return nil
}

func (sc *scanner) number() error {
	s, i := sc.s, sc.i
	if s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && s[i] >= '1' && s[i] <= '9':
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
	default:
		sc.i = i
		return sc.fail(ReasonMalformed)
	}
	if i < len(s) && s[i] == '.' {
		i++
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == j {
			sc.i = i
			return sc.fail(ReasonMalformed)
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i == j {
			sc.i = i
			return sc.fail(ReasonMalformed)
		}
	}
	sc.i = i
	return nil
}

const (
	lo8 = 0x0101010101010101
	hi8 = 0x8080808080808080
)

// str scans a string starting at its opening quote and returns the span
// of its raw contents (between the quotes) and whether it holds escapes.
// Where the CPU allows, strBlocks does it in one vectorized pass, else
// strPortable; both decide every input alike (FuzzStrEquivalent).
func (sc *scanner) str() (start, end int, escaped bool, err error) {
	if haveSpecialBlocks {
		return sc.strBlocks()
	}
	return sc.strPortable()
}

// isSpecial reports whether a byte inside a string needs a look of its
// own: the closing quote, an escape, a control character (refused) or
// the first byte of a non-ASCII rune (validated).
func isSpecial(c byte) bool {
	return c == '"' || c == '\\' || c < 0x20 || c >= 0x80
}

// indexSpecial returns the index of the first special byte of s, or
// len(s). The whole 32-byte blocks are scanned by indexSpecialBlocks,
// the rest byte by byte; a special first byte (the next rune of non-ASCII
// text) is answered without a block scan.
func indexSpecial(s string) int {
	if len(s) == 0 || isSpecial(s[0]) {
		return 0
	}
	i := indexSpecialBlocks(s)
	if i < len(s)&^31 {
		return i
	}
	for ; i < len(s); i++ {
		if isSpecial(s[i]) {
			return i
		}
	}
	return len(s)
}

// strBlocks is str in one pass: each step finds the next special byte
// (indexSpecial) and looks at it alone.
func (sc *scanner) strBlocks() (start, end int, escaped bool, err error) {
	s := sc.s
	i := sc.i + 1
	start = i
	for {
		i += indexSpecial(s[i:])
		if i >= len(s) {
			sc.i = i
			return 0, 0, false, sc.fail(ReasonMalformed)
		}
		switch c := s[i]; {
		case c == '"':
			sc.i = i + 1
			return start, i, escaped, nil
		case c == '\\':
			escaped = true
			if i, err = sc.pastEscape(i); err != nil {
				return 0, 0, false, err
			}
		case c < 0x20:
			sc.i = i
			return 0, 0, false, sc.fail(ReasonMalformed)
		default: // non-ASCII
			if i, err = sc.pastRune(i); err != nil {
				return 0, 0, false, err
			}
		}
	}
}

// pastEscape checks the escape at sc.s[i] and returns the index after it;
// a refusal is at i.
func (sc *scanner) pastEscape(i int) (int, error) {
	n, r := sc.escape(i)
	if r != "" {
		sc.i = i
		return 0, sc.fail(r)
	}
	return i + n, nil
}

// pastRune checks the non-ASCII rune at sc.s[i] and returns the index
// after it; invalid UTF-8 is refused at i.
func (sc *scanner) pastRune(i int) (int, error) {
	r, n := utf8.DecodeRuneInString(sc.s[i:])
	if r == utf8.RuneError && n <= 1 {
		sc.i = i
		return 0, sc.fail(ReasonBadUTF8)
	}
	return i + n, nil
}

// strPortable is str without block scans: strings.IndexByte (vectorized)
// finds the next quote and backslash; the printable ASCII between them is
// checked 32 and 8 bytes at a time (plainPrefix), and only escapes and
// non-ASCII runes are looked at one by one.
func (sc *scanner) strPortable() (start, end int, escaped bool, err error) {
	s := sc.s
	i := sc.i + 1
	start = i
	// quote and bslash are the next '"' and '\\' at or after i, once
	// searched (len(s): none; bslash == quote: none before the quote).
	quote, bslash := -1, -1
	for {
		if quote < i {
			quote = len(s)
			if q := strings.IndexByte(s[i:], '"'); q >= 0 {
				quote = i + q
			}
		}
		if bslash < i {
			bslash = quote
			if b := strings.IndexByte(s[i:quote], '\\'); b >= 0 {
				bslash = i + b
			}
		}
		i += plainPrefix(s[i:bslash])
		if i < bslash {
			if s[i] < 0x20 {
				sc.i = i
				return 0, 0, false, sc.fail(ReasonMalformed)
			}
			// Non-ASCII: its continuation bytes are never a quote or a
			// backslash, so a valid rune ends before bslash.
			if i, err = sc.pastRune(i); err != nil {
				return 0, 0, false, err
			}
			continue
		}
		switch {
		case i >= len(s):
			sc.i = i
			return 0, 0, false, sc.fail(ReasonMalformed)
		case i == quote:
			sc.i = i + 1
			return start, i, escaped, nil
		}
		escaped = true
		if i, err = sc.pastEscape(i); err != nil {
			return 0, 0, false, err
		}
	}
}

// plainPrefix returns the length of the longest prefix of s free of
// control characters and non-ASCII bytes (< 0x20, >= 0x80).
func plainPrefix(s string) int {
	n := 0
	// A byte below 0x20 borrows into its top bit in x-lo8*0x20 (no
	// borrow comes from the bytes below the first such byte); x's own
	// top bits flag non-ASCII.
	const sp = lo8 * 0x20
	for len(s) >= 32 {
		a, b, c, d := le64(s), le64(s[8:]), le64(s[16:]), le64(s[24:])
		if ((a-sp)|a|(b-sp)|b|(c-sp)|c|(d-sp)|d)&hi8 != 0 {
			break
		}
		s, n = s[32:], n+32
	}
	for len(s) >= 8 {
		if a := le64(s); ((a-sp)|a)&hi8 != 0 {
			break
		}
		s, n = s[8:], n+8
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 {
			return n + i
		}
	}
	return n + len(s)
}

// le64 reads the first 8 bytes of s as a little-endian integer.
func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// escape checks the escape sequence at s[i] (a backslash) and returns its
// length, or a reason when it is invalid. A \u escape of a high surrogate
// must be followed by one of a low surrogate; a lone low surrogate is
// refused (decoders disagree on what it becomes).
func (sc *scanner) escape(i int) (int, Reason) {
	s := sc.s
	if i+1 >= len(s) {
		return 0, ReasonMalformed
	}
	switch s[i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return 2, ""
	case 'u':
		r, ok := hex4(s, i+2)
		if !ok {
			return 0, ReasonMalformed
		}
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return 0, ReasonBadUTF8
		case r >= 0xD800 && r <= 0xDBFF:
			if i+7 >= len(s) || s[i+6] != '\\' || s[i+7] != 'u' {
				return 0, ReasonBadUTF8
			}
			r2, ok := hex4(s, i+8)
			if !ok || r2 < 0xDC00 || r2 > 0xDFFF {
				return 0, ReasonBadUTF8
			}
			return 12, ""
		}
		return 6, ""
	}
	return 0, ReasonMalformed
}

func hex4(s string, i int) (rune, bool) {
	if i+4 > len(s) {
		return 0, false
	}
	var r rune
	for _, c := range []byte(s[i : i+4]) {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}

func (sc *scanner) array(depth int) error {
	if depth > sc.maxDepth {
		return sc.fail(ReasonTooDeep)
	}
	sc.i++ // '['
	sc.ws()
	if sc.i < len(sc.s) && sc.s[sc.i] == ']' {
		sc.i++
		return nil
	}
	for {
		if err := sc.value(depth); err != nil {
			return err
		}
		sc.ws()
		if sc.i >= len(sc.s) {
			return sc.fail(ReasonMalformed)
		}
		switch sc.s[sc.i] {
		case ',':
			sc.i++
		case ']':
			sc.i++
			return nil
		default:
			return sc.fail(ReasonMalformed)
		}
	}
}

// object scans an object whose members are all scanned generically.
func (sc *scanner) object(depth int) error {
	return sc.members(depth, memberAny)
}

// memberMode says how members scans member values.
type memberMode uint8

const (
	memberAny    memberMode = iota // generically
	memberTop                      // the request object's (Parse)
	memberParams                   // params' (Parse)
	memberArgs                     // params.arguments' (generically, noted in p.argIx)
)

// members scans an object; member values are scanned as mode says.
// Duplicate names are refused.
func (sc *scanner) members(depth int, mode memberMode) error {
	if depth > sc.maxDepth {
		return sc.fail(ReasonTooDeep)
	}
	sc.i++ // '{'
	// The names seen so far: in local up to linearNames, then in many.
	var local [linearNames]nameRef
	names := local[:0]
	var many map[string]struct{}
	sc.ws()
	if sc.i < len(sc.s) && sc.s[sc.i] == '}' {
		sc.i++
		return nil
	}
	for {
		sc.ws()
		if sc.i >= len(sc.s) || sc.s[sc.i] != '"' {
			return sc.fail(ReasonMalformed)
		}
		at := sc.i
		start, end, esc, err := sc.str()
		if err != nil {
			return err
		}
		ref := nameRef{start: start, end: end}
		if esc {
			b0 := len(sc.buf)
			sc.buf = appendUnquoted(sc.buf, sc.s[start:end])
			ref = nameRef{start: b0, end: len(sc.buf), inBuf: true}
		}
		name := sc.name(ref)
		ref.key = keyOf(name)
		switch {
		case many != nil:
			f := fold(name)
			if _, dup := many[f]; dup {
				sc.i = at
				return sc.fail(ReasonDuplicateKey)
			}
			many[f] = struct{}{}
		default:
			for _, prev := range names {
				if !prev.key.differs(ref.key) && sameName(sc.name(prev), name) {
					sc.i = at
					return sc.fail(ReasonDuplicateKey)
				}
			}
			if len(names) == linearNames {
				many = make(map[string]struct{}, 2*linearNames)
				for _, prev := range names {
					many[fold(sc.name(prev))] = struct{}{}
				}
				many[fold(name)] = struct{}{}
			} else {
				names = append(names, ref)
			}
		}
		sc.ws()
		if sc.i >= len(sc.s) || sc.s[sc.i] != ':' {
			return sc.fail(ReasonMalformed)
		}
		sc.i++
		sc.ws()
		if sc.i >= len(sc.s) {
			return sc.fail(ReasonMalformed)
		}
		switch mode {
		case memberTop:
			err = sc.topMember(name, depth)
		case memberParams:
			err = sc.paramsMember(name, depth)
		case memberArgs:
			val := sc.i
			if err = sc.value(depth); err == nil {
				sc.p.argIx.add(sc.p.argsAt, start, end, val, sc.i, esc)
			}
		default:
			err = sc.value(depth)
		}
		if err != nil {
			return err
		}
		sc.ws()
		if sc.i >= len(sc.s) {
			return sc.fail(ReasonMalformed)
		}
		switch sc.s[sc.i] {
		case ',':
			sc.i++
		case '}':
			sc.i++
			return nil
		default:
			return sc.fail(ReasonMalformed)
		}
	}
}

// sameName is strings.EqualFold with a fast path for ASCII: names of
// different lengths fold together only through non-ASCII runes (the
// Kelvin sign folds with 'k', 'ſ' with 's').
func sameName(a, b string) bool {
	if len(a) != len(b) {
		return !isASCII(a) && strings.EqualFold(a, b) || !isASCII(b) && strings.EqualFold(a, b)
	}
	for i := 0; i < len(a); i++ {
		ca, cb := a[i], b[i]
		if ca == cb {
			continue
		}
		if ca|cb >= 0x80 {
			return strings.EqualFold(a, b)
		}
		if ca >= 'A' && ca <= 'Z' {
			ca += 'a' - 'A'
		}
		if cb >= 'A' && cb <= 'Z' {
			cb += 'a' - 'A'
		}
		if ca != cb {
			return false
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// fold maps names that strings.EqualFold equates to one string (upper
// then lower case: 'ſ' and 'K' (Kelvin) fold to "s" and "k").
func fold(name string) string {
	return strings.ToLower(strings.ToUpper(name))
}

// name returns a member name; a name in buf is copied only when the map
// of a large object keeps it (Go's map assignment copies the string
// header, not the bytes, so a buf-backed string must be materialized).
func (sc *scanner) name(r nameRef) string {
	if r.inBuf {
		return string(sc.buf[r.start:r.end])
	}
	return sc.s[r.start:r.end]
}

// appendUnquoted appends the decoded contents of a validated JSON string
// (without its quotes) to b.
func appendUnquoted(b []byte, raw string) []byte {
	for i := 0; i < len(raw); {
		c := raw[i]
		if c != '\\' {
			b = append(b, c)
			i++
			continue
		}
		switch raw[i+1] {
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r, _ := hex4(raw, i+2)
			if r >= 0xD800 && r <= 0xDBFF { // validated: a low surrogate follows
				r2, _ := hex4(raw, i+8)
				r = 0x10000 + (r-0xD800)<<10 + (r2 - 0xDC00)
				i += 6
			}
			b = utf8.AppendRune(b, r)
			i += 6
			continue
		default: // '"', '\\', '/'
			b = append(b, raw[i+1])
		}
		i += 2
	}
	return b
}
