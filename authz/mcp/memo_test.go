package mcp

import (
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

// memoArgs is a call whose id is far enough from the end to be remembered.
func memoCall(id, args string) string {
	return `{"jsonrpc":"2.0","id":` + id + `,"method":"tools/call","params":{"name":"github.list_issues","arguments":` + args + `}}`
}

const memoArgs = `{"owner":"acme","repo":"widgets","query":"frobnicator overflow when the widget count wraps"}`

// sameParse fails unless the memo's answer for body is Parse's.
func sameParse(t *testing.T, m *Memo, lim Limits, body string) Request {
	t.Helper()
	got, gotErr := m.Parse(body)
	want, wantErr := Parse(body, lim)
	if got.Shared() != nil && gotErr != nil {
		t.Fatalf("memo shares a slot for a refused body %q", body)
	}
	plain := got
	if plain.shared = nil; plain != want {
		t.Fatalf("memo parsed %q as\n%+v\nParse as\n%+v", body, got, want)
	}
	var ge, we *Error
	if errors.As(gotErr, &ge) != errors.As(wantErr, &we) || (ge != nil && *ge != *we) || (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("memo on %q: error %v, Parse: %v", body, gotErr, wantErr)
	}
	return got
}

// fromMemo reports whether r's arguments are the memo's copy, not a
// substring of body: the memo answered without parsing.
func fromMemo(r Request, body string) bool {
	if r.Arguments == "" {
		return false
	}
	if r.Shared() == nil {
		return false
	}
	p := uintptr(unsafe.Pointer(unsafe.StringData(r.Arguments)))
	b := uintptr(unsafe.Pointer(unsafe.StringData(body)))
	return p < b || p >= b+uintptr(len(body))
}

// remember parses body three times in a row through m (its glance, its
// full fingerprint, its admission) and fails unless m then answers it
// from its memory.
func remember(t *testing.T, m *Memo, lim Limits, body string) {
	t.Helper()
	for range 3 {
		sameParse(t, m, lim, body)
	}
	if r := sameParse(t, m, lim, body); !fromMemo(r, body) {
		t.Fatalf("%q not remembered after three sightings in a row", body)
	}
}

// TestMemoDecidesAsParse: after a body is remembered, a body that differs
// from it anywhere but in a plain id is parsed, and a body that differs
// in a plain id only is answered from the memo; either way the answer is
// Parse's. Every probe is checked both ways.
func TestMemoDecidesAsParse(t *testing.T) {
	seed := memoCall("7", memoArgs)
	i := strings.Index(seed, `"id":7`) + len(`"id":`)
	pre, post := seed[:i], seed[i+1:]
	tests := []struct {
		name, probe string
		hit         bool
	}{
		{"same body", seed, true},
		{"next id", pre + "8" + post, true},
		{"long id", pre + "-12345678901234567890"[:20] + post, true},
		{"string id", pre + `"req-9"` + post, true},
		{"empty string id", pre + `""` + post, true},
		{"one byte differs in the arguments", strings.Replace(seed, "widgets", "widgetz", 1), false},
		{"one byte differs before the id", strings.Replace(seed, "2.0", "2.1", 1), false},
		{"same length, member renamed before the id", strings.Replace(seed, `"jsonrpc"`, `"jsonrpx"`, 1), false},
		{"one byte differs in the tool", strings.Replace(seed, "list_issues", "list_issuez", 1), false},
		{"duplicate key smuggled as the id", pre + `7,"id":8` + post, false},
		{"method smuggled as the id", pre + `7,"method":"tools/list"` + post, false},
		{"params closed early through the id", pre + `7}` + post, false},
		{"leading zero id", pre + "07" + post, false},
		{"fraction id", pre + "7.5" + post, false},
		{"exponent id", pre + "7e2" + post, false},
		{"21-byte id", pre + "-12345678901234567890" + post, false},
		{"escaped quote in id", pre + `"a\"b"` + post, false},
		{"escape in id", pre + `"\u0041"` + post, false},
		{"non-ASCII id", pre + `"é"` + post, false},
		{"control byte in id", pre + "\"a\x01\"" + post, false},
		{"unterminated string id", pre + `"abc` + post, false},
		{"null id", pre + "null" + post, false},
		{"object id", pre + "{}" + post, false},
		{"no id", pre + post, false},
		{"minus alone", pre + "-" + post, false},
		{"duplicate key after the same prefix", pre + "7" + strings.Replace(post, `"repo"`, `"owner"`, 1), false},
		{"case-folded duplicate after the same prefix", pre + "7" + strings.Replace(post, `"repo"`, `"OWNER"`, 1), false},
		{"invalid UTF-8 after the same prefix", pre + "7" + strings.Replace(post, "frobnicator", "frob\xffcator", 1), false},
		{"trailing data", seed + `{}`, false},
		{"truncated", seed[:len(seed)-1], false},
		{"batch of it", "[" + seed + "]", false},
	}
	lim := Limits{}
	m := NewMemo(lim)
	remember(t, m, lim, seed)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := sameParse(t, m, lim, tt.probe)
			if hit := fromMemo(got, tt.probe); hit != tt.hit {
				t.Fatalf("answered from the memo: %v, want %v", hit, tt.hit)
			}
			// The probe may have displaced the seed's entry: put it back.
			remember(t, m, lim, seed)
		})
	}
}

// TestMemoLimits: a remembered body does not lift the size limit for a
// longer id, and bodies over MaxMemoBody are never remembered.
func TestMemoLimits(t *testing.T) {
	seed := memoCall("7", memoArgs)
	lim := Limits{MaxBytes: len(seed) + 2}
	m := NewMemo(lim)
	remember(t, m, lim, seed)
	if got := sameParse(t, m, lim, memoCall("700", memoArgs)); !fromMemo(got, memoCall("700", memoArgs)) {
		t.Fatal("a body within the limit was not answered from the memo")
	}
	sameParse(t, m, lim, memoCall("7000", memoArgs)) // one byte over: too large

	big := memoCall("1", `{"q":"`+strings.Repeat("x", MaxMemoBody)+`"}`)
	m = NewMemo(Limits{})
	for range 3 {
		if got := sameParse(t, m, Limits{}, big); fromMemo(got, big) {
			t.Fatal("a body over MaxMemoBody was remembered")
		}
	}
	// An id too close to the end to choose a stable slot.
	late := `{"jsonrpc":"2.0","method":"tools/list","id":123}`
	for range 3 {
		sameParse(t, m, Limits{}, late)
	}
	if n := m.entries(); n != 0 {
		t.Fatalf("%d entries remembered, want 0", n)
	}
}

// TestMemoGlanceOnlyFilters: bodies alike near their id and end (the
// same glance) but different in the middle are never remembered when
// they alternate: the glance only spares the full fingerprint, it never
// admits a body.
func TestMemoGlanceOnlyFilters(t *testing.T) {
	mid := strings.Repeat("m", 300)
	a := memoCall("1", `{"q":"`+mid+`a`+mid+`"}`)
	b := memoCall("1", `{"q":"`+mid+`b`+mid+`"}`)
	at := strings.Index(a, `"id":1`) + len(`"id":`)
	m := NewMemo(Limits{})
	if m.glanceAt(a[:at], a[at+1:]) != m.glanceAt(b[:at], b[at+1:]) {
		t.Fatal("test bodies have different glances")
	}
	for range 4 {
		sameParse(t, m, Limits{}, a)
		sameParse(t, m, Limits{}, b)
	}
	if n := m.entries(); n != 0 {
		t.Fatalf("%d bodies remembered, want 0", n)
	}
	remember(t, m, Limits{}, a)
}

func (m *Memo) entries() int {
	n := 0
	for i := range m.slots {
		if m.slots[i].Load() != nil {
			n++
		}
	}
	return n
}

// TestMemoConcurrent: goroutines parsing bodies that share a slot (same
// tail) through one memo all get Parse's answers (run with -race).
func TestMemoConcurrent(t *testing.T) {
	m := NewMemo(Limits{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 300 {
				body := memoCall(strconv.Itoa(i), `{"repo":"r`+strconv.Itoa((g+i)%3)+`","q":"a shared tail, so one slot for all"}`)
				got, err := m.Parse(body)
				want, wantErr := Parse(body, Limits{})
				if got.shared = nil; got != want || (err == nil) != (wantErr == nil) {
					t.Errorf("memo %+v %v, Parse %+v %v", got, err, want, wantErr)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// FuzzMemo: the memo answers as Parse does for any body, after any
// other body was remembered, including a body that is the remembered one
// with its id replaced by anything, or with one byte changed.
func FuzzMemo(f *testing.F) {
	f.Add(memoCall("7", memoArgs), "8", uint(3), byte('x'))
	f.Add(memoCall(`"a"`, memoArgs), `7,"id":8`, uint(40), byte('"'))
	f.Add(memoCall("1", `{"a":{"b":[1,2,{"c":"\u00e9"}]},"n":null}`), `"\ud800"`, uint(70), byte(0xff))
	f.Add(`{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///repo/a.md","x":[true,false,{}]}}`, "-0", uint(0), byte('{'))
	f.Fuzz(func(t *testing.T, body, id string, at uint, b byte) {
		lim := Limits{MaxDepth: 16}
		m := NewMemo(lim)
		sameParse(t, m, lim, body)
		r := sameParse(t, m, lim, body)
		probes := []string{body}
		if len(body) > 0 {
			flipped := []byte(body)
			flipped[at%uint(len(body))] = b
			probes = append(probes, string(flipped))
		}
		if r.ID != "" {
			_, idAt, _ := parse(body, lim.withDefaults())
			probes = append(probes, body[:idAt]+id+body[idAt+len(r.ID):])
		}
		for _, p := range probes {
			sameParse(t, m, lim, p)
			sameParse(t, m, lim, body)
		}
	})
}

// BenchmarkMemo compares a strict parse of a 4 KiB tools/call with the
// memo's answer for the same call under a new id (hit), and for a stream
// of distinct calls (miss: the memo's overhead over Parse).
func BenchmarkMemo(b *testing.B) {
	body := func(id int, repo string) string {
		return memoCall(strconv.Itoa(id), `{"owner":"acme","repo":"`+repo+`","q":"`+strings.Repeat("frobnicator overflow when the widget count wraps; ", 78)+`"}`)
	}
	bodies := make([]string, 1024)
	for i := range bodies {
		bodies[i] = body(i, "repo-"+strconv.Itoa(i))
	}
	same := make([]string, 1024)
	for i := range same {
		same[i] = body(i, "widgets")
	}
	b.Run("parse", func(b *testing.B) {
		b.SetBytes(int64(len(bodies[0])))
		for i := 0; b.Loop(); i++ {
			if _, err := Parse(bodies[i%len(bodies)], Limits{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("memo-miss", func(b *testing.B) {
		m := NewMemo(Limits{})
		b.SetBytes(int64(len(bodies[0])))
		for i := 0; b.Loop(); i++ {
			if _, err := m.Parse(bodies[i%len(bodies)]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("memo-miss-cold", func(b *testing.B) {
		// 4,096 distinct bodies (16 MiB), read from cold memory as in
		// authz's BenchmarkCheckMCP/miss, each prefetched as Extract does.
		cold := make([]string, 4096)
		for i := range cold {
			cold[i] = body(i, "repo-"+strconv.Itoa(i))
		}
		m := NewMemo(Limits{})
		b.SetBytes(int64(len(cold[0])))
		for i := 0; b.Loop(); i++ {
			body := cold[i%len(cold)]
			Prefetch(body)
			if _, err := m.Parse(body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("memo-hit-new-id", func(b *testing.B) {
		m := NewMemo(Limits{})
		for range 3 {
			m.Parse(same[0])
		}
		b.SetBytes(int64(len(same[0])))
		for i := 0; b.Loop(); i++ {
			if _, err := m.Parse(same[i%len(same)]); err != nil {
				b.Fatal(err)
			}
		}
	})
}
