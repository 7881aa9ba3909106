package mcp

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"
)

const call = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"github.list_issues","arguments":{"owner":"acme","n":3}}}`

func TestParseAccepts(t *testing.T) {
	tests := []struct {
		name, body string
		want       Request
	}{
		{"tools/call", call, Request{ID: "7", Method: "tools/call", Name: "github.list_issues", Arguments: `{"owner":"acme","n":3}`}},
		{"string id, whitespace", " \n{ \"id\" : \"a-1\" , \"jsonrpc\":\"2.0\",\"method\":\"tools/list\" }\r\n",
			Request{ID: `"a-1"`, Method: "tools/list"}},
		{"escaped name", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"git\u0068ub.x"}}`,
			Request{ID: "1", Method: "tools/call", Name: "github.x"}},
		{"resource", `{"jsonrpc":"2.0","id":-2,"method":"resources/read","params":{"uri":"file:///repo/README.md"}}`,
			Request{ID: "-2", Method: "resources/read", URI: "file:///repo/README.md"}},
		{"prompt", `{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"review","arguments":{"lang":"go"}}}`,
			Request{ID: "3", Method: "prompts/get", Name: "review", Arguments: `{"lang":"go"}`}},
		{"notification", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, Request{Method: "notifications/initialized"}},
		{"meta and nesting", `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"_meta":{"progressToken":1},"name":"t","arguments":{"a":[1,{"b":null,"c":[true,false]}],"s":"\ud83d\ude00 é \"q\""}}}`,
			Request{ID: "9", Method: "tools/call", Name: "t", Arguments: `{"a":[1,{"b":null,"c":[true,false]}],"s":"\ud83d\ude00 é \"q\""}`}},
		{"same key in sibling objects", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"x":{"k":1},"y":{"k":2}}}}`,
			Request{ID: "1", Method: "tools/call", Name: "t", Arguments: `{"x":{"k":1},"y":{"k":2}}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.body, Limits{})
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			checkArgumentValues(t, &got)
			got.args = argIndex{} // what it notes is checked just above
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseRefuses(t *testing.T) {
	many := func(dupAt int) string {
		var b strings.Builder
		b.WriteString(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{`)
		for i := 0; i < 40; i++ {
			if i > 0 {
				b.WriteByte(',')
			}
			k := i
			if i == dupAt {
				k = 3
			}
			fmt.Fprintf(&b, `"k%d":%d`, k, i)
		}
		b.WriteString(`}}}`)
		return b.String()
	}
	deep := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}}}`
	tests := []struct {
		name, body string
		want       Reason
	}{
		{"empty", "", ReasonNoBody},
		{"blank", " \n", ReasonNoBody},
		{"batch", `[` + call + `]`, ReasonBatch},
		{"scalar", `"tools/call"`, ReasonNotRequest},
		{"response", `{"jsonrpc":"2.0","id":7,"result":{}}`, ReasonNotRequest},
		{"response with method", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t"},"result":{}}`, ReasonNotRequest},
		{"error object", `{"jsonrpc":"2.0","id":7,"error":{"code":1,"message":"x"}}`, ReasonNotRequest},
		{"unknown member", `{"jsonrpc":"2.0","id":7,"method":"tools/list","extra":1}`, ReasonNotRequest},
		{"no method", `{"jsonrpc":"2.0","id":7}`, ReasonNotRequest},
		{"no jsonrpc", `{"id":7,"method":"tools/list"}`, ReasonBadVersion},
		{"jsonrpc 1.0", `{"jsonrpc":"1.0","id":7,"method":"tools/list"}`, ReasonBadVersion},
		{"jsonrpc number", `{"jsonrpc":2.0,"id":7,"method":"tools/list"}`, ReasonBadVersion},
		{"jsonrpc padded", `{"jsonrpc":"2.0 ","id":7,"method":"tools/list"}`, ReasonBadVersion},
		{"duplicate method", `{"jsonrpc":"2.0","id":7,"method":"tools/list","method":"tools/call"}`, ReasonDuplicateKey},
		{"duplicate via escape", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a","n\u0061me":"b"}}`, ReasonDuplicateKey},
		{"duplicate in arguments", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a","arguments":{"x":{"org":"a","org":"b"}}}}`, ReasonDuplicateKey},
		{"duplicate in array element", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a","arguments":{"x":[{"o":1,"o":2}]}}}`, ReasonDuplicateKey},
		{"duplicate in large object", many(30), ReasonDuplicateKey},
		{"duplicate ignoring case", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a","NAME":"b"}}`, ReasonDuplicateKey},
		{"duplicate by Unicode folding", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a","arguments":{"kind":1,"\u212aind":2}}}`, ReasonDuplicateKey},
		{"duplicate early in large object", many(5), ReasonDuplicateKey},
		{"trailing object", call + call, ReasonMalformed},
		{"trailing garbage", call + "x", ReasonMalformed},
		{"unterminated", call[:len(call)-1], ReasonMalformed},
		{"cut in string", call[:40], ReasonMalformed},
		{"params array", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":["t"]}`, ReasonBadParams},
		{"params string", `{"jsonrpc":"2.0","id":7,"method":"tools/list","params":"x"}`, ReasonBadParams},
		{"arguments array", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"t","arguments":[1]}}`, ReasonBadParams},
		{"tool missing", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{}}`, ReasonBadParams},
		{"tool not string", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":1}}`, ReasonBadParams},
		{"tool with space", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a b"}}`, ReasonBadParams},
		{"tool with glob", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a*"}}`, ReasonBadParams},
		{"tool with NUL", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"a\u0000b"}}`, ReasonBadParams},
		{"uri dot-dot", `{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"file:///repo/../etc/passwd"}}`, ReasonBadParams},
		{"uri trailing dot-dot", `{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"file:///repo/.."}}`, ReasonBadParams},
		{"uri encoded dot", `{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"file:///repo/%2E%2e/x"}}`, ReasonBadParams},
		{"uri encoded slash", `{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"file:///repo%2fx"}}`, ReasonBadParams},
		{"uri backslash", `{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"file:///repo\\..\\x"}}`, ReasonBadParams},
		{"uri missing", `{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{}}`, ReasonBadParams},
		{"no id on request", `{"jsonrpc":"2.0","method":"tools/call","params":{"name":"t"}}`, ReasonBadID},
		{"id on notification", `{"jsonrpc":"2.0","id":1,"method":"notifications/initialized"}`, ReasonBadID},
		{"null id", `{"jsonrpc":"2.0","id":null,"method":"tools/list"}`, ReasonBadID},
		{"fractional id", `{"jsonrpc":"2.0","id":1.5,"method":"tools/list"}`, ReasonBadID},
		{"object id", `{"jsonrpc":"2.0","id":{},"method":"tools/list"}`, ReasonBadID},
		{"method number", `{"jsonrpc":"2.0","id":1,"method":5}`, ReasonBadMethod},
		{"method with newline", `{"jsonrpc":"2.0","id":1,"method":"tools/list\n"}`, ReasonBadMethod},
		{"invalid utf8 in string", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"t\",\"arguments\":{\"a\":\"\xff\"}}}", ReasonBadUTF8},
		{"invalid utf8 in key", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"t\",\"arguments\":{\"\xc3\x28\":1}}}", ReasonBadUTF8},
		{"invalid utf8 outside string", "{\"jsonrpc\":\"2.0\",\"id\":1,\xff}", ReasonMalformed},
		{"lone low surrogate", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":"\udc00"}}}`, ReasonBadUTF8},
		{"lone high surrogate", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":"\ud800x"}}}`, ReasonBadUTF8},
		{"control char in string", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"t\",\"arguments\":{\"a\":\"\t\"}}}", ReasonMalformed},
		{"bad escape", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":"\x"}}}`, ReasonMalformed},
		{"leading zero", `{"jsonrpc":"2.0","id":01,"method":"tools/list"}`, ReasonMalformed},
		{"bare minus", `{"jsonrpc":"2.0","id":-,"method":"tools/list"}`, ReasonMalformed},
		{"trailing comma", `{"jsonrpc":"2.0","id":1,"method":"tools/list",}`, ReasonMalformed},
		{"comment", `{"jsonrpc":"2.0","id":1,"method":"tools/list"/*x*/}`, ReasonMalformed},
		{"single quotes", `{'jsonrpc':'2.0'}`, ReasonMalformed},
		{"NaN", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":NaN}}}`, ReasonMalformed},
		{"BOM", "\xef\xbb\xbf" + call, nonASCIIReason("\xef\xbb\xbf")},
		{"too deep", deep, ReasonTooDeep},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.body, Limits{})
			var e *Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse accepted or returned %T %v", err, err)
			}
			if e.Reason != tt.want {
				t.Fatalf("reason %s, want %s (%v)", e.Reason, tt.want, err)
			}
		})
	}
}

func TestParseLimits(t *testing.T) {
	if _, err := Parse(call, Limits{MaxBytes: len(call) - 1}); reasonOf(err) != ReasonTooLarge {
		t.Fatalf("over MaxBytes: %v", err)
	}
	if _, err := Parse(call, Limits{MaxBytes: len(call)}); err != nil {
		t.Fatalf("at MaxBytes: %v", err)
	}
	// call nests 3 deep: request, params, arguments.
	if _, err := Parse(call, Limits{MaxDepth: 2}); reasonOf(err) != ReasonTooDeep {
		t.Fatalf("over MaxDepth: %v", err)
	}
	if _, err := Parse(call, Limits{MaxDepth: 3}); err != nil {
		t.Fatalf("at MaxDepth: %v", err)
	}
}

func reasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

func meta(t *testing.T, m map[string]any) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(m)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestFromEnvoy(t *testing.T) {
	ok := map[string]any{"jsonrpc": "2.0", "method": "tools/call", "id": 7.0, "params": map[string]any{"name": "github.list_issues"}, "is_mcp_request": true}
	tests := []struct {
		name string
		src  Sources
		want Reason // "" = accepted
	}{
		{"body only", Sources{Body: call}, ""},
		{"all agree", Sources{Body: call, Metadata: meta(t, ok),
			Headers: map[string]string{"mcp-method": "tools/call", "mcp-name": "github.list_issues"}}, ""},
		{"partial body header", Sources{Body: call, Headers: map[string]string{"x-envoy-auth-partial-body": "true"}}, ReasonPartialBody},
		{"partial body header false", Sources{Body: call, Headers: map[string]string{"x-envoy-auth-partial-body": "false"}}, ""},
		{"exceeding limit", Sources{Body: call, Metadata: meta(t, map[string]any{"method": "tools/call", "is_exceeding_limit": true})}, ReasonPartialBody},
		{"filter says not mcp", Sources{Body: call, Metadata: meta(t, map[string]any{"is_mcp_request": false})}, ReasonNotRequest},
		{"metadata method differs", Sources{Body: call, Metadata: meta(t, map[string]any{"method": "tools/list"})}, ReasonMismatch},
		{"metadata tool differs", Sources{Body: call, Metadata: meta(t, map[string]any{"method": "tools/call", "params": map[string]any{"name": "github.delete_repository"}})}, ReasonMismatch},
		{"metadata tool not a string", Sources{Body: call, Metadata: meta(t, map[string]any{"method": "tools/call", "params": map[string]any{"name": 1.0}})}, ReasonMismatch},
		{"header method differs", Sources{Body: call, Headers: map[string]string{"mcp-method": "tools/list"}}, ReasonMismatch},
		{"header name differs", Sources{Body: call, Headers: map[string]string{"mcp-name": "github.delete_repository"}}, ReasonMismatch},
		{"header name empty", Sources{Body: call, Headers: map[string]string{"mcp-name": ""}}, ReasonMismatch},
		{"header uri", Sources{Body: `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}`,
			Headers: map[string]string{"mcp-method": "resources/read", "mcp-name": "file:///a"}}, ""},
		{"header uri differs", Sources{Body: `{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///a"}}`,
			Headers: map[string]string{"mcp-name": "file:///b"}}, ReasonMismatch},
		{"bad body", Sources{Body: `[` + call + `]`, Metadata: meta(t, ok)}, ReasonBatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := FromEnvoy(tt.src, Limits{})
			if got := reasonOf(err); got != tt.want || (tt.want == "" && err != nil) {
				t.Fatalf("reason %q, want %q (%v)", got, tt.want, err)
			}
		})
	}
}

// FuzzParse checks that Parse never panics and accepts only what a
// standard decoder reads the same way: valid JSON, the same method, tool,
// uri and arguments, and no member a last-wins decoder would read
// differently.
func FuzzParse(f *testing.F) {
	for _, s := range []string{call, `[` + call + `]`, `{"jsonrpc":"2.0","method":"notifications/initialized"}`,
		`{"jsonrpc":"2.0","id":"x","method":"resources/read","params":{"uri":"a:b"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","n\u0061me":"b"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":"\ud83d\ude00"}}}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		r, err := Parse(body, Limits{MaxDepth: 16})
		if err != nil {
			if reasonOf(err) == "" {
				t.Fatalf("error without reason: %v", err)
			}
			return
		}
		if !json.Valid([]byte(body)) {
			t.Fatalf("accepted invalid JSON %q", body)
		}
		var std struct {
			JSONRPC string          `json:"jsonrpc"`
			Method  string          `json:"method"`
			ID      json.RawMessage `json:"id"`
			Params  struct {
				Name      *string         `json:"name"`
				URI       *string         `json:"uri"`
				Arguments json.RawMessage `json:"arguments"`
			} `json:"params"`
		}
		if err := json.Unmarshal([]byte(body), &std); err != nil {
			t.Fatalf("accepted %q, encoding/json refuses: %v", body, err)
		}
		if std.JSONRPC != "2.0" || std.Method != r.Method || string(std.ID) != r.ID {
			t.Fatalf("accepted %q as %+v, encoding/json reads %+v", body, r, std)
		}
		if r.Name != "" && (std.Params.Name == nil || *std.Params.Name != r.Name) {
			t.Fatalf("name %q, encoding/json reads %v", r.Name, std.Params.Name)
		}
		if r.URI != "" && (std.Params.URI == nil || *std.Params.URI != r.URI) {
			t.Fatalf("uri %q, encoding/json reads %v", r.URI, std.Params.URI)
		}
		if r.Arguments != "" && string(std.Params.Arguments) != r.Arguments {
			t.Fatalf("arguments %q, encoding/json reads %q", r.Arguments, std.Params.Arguments)
		}
		if r.Arguments != "" {
			checkMembers(t, r.Arguments)
			checkArgumentValues(t, &r)
		}
	})
}

// checkArgumentValues compares ArgumentValues (from the members the
// parse noted) with MemberValues (reading the arguments again) for every
// member name, its upper case and names that are absent.
func checkArgumentValues(t *testing.T, r *Request) {
	t.Helper()
	keys := []string{"", "absent"}
	Members(r.Arguments, func(name, _ string) bool {
		keys = append(keys, name, strings.ToUpper(name))
		return true
	})
	got, want := make([]string, len(keys)), make([]string, len(keys))
	r.ArgumentValues(keys, got)
	MemberValues(r.Arguments, keys, want)
	if !slices.Equal(got, want) {
		t.Fatalf("arguments %s: ArgumentValues(%q) = %q, MemberValues %q", r.Arguments, keys, got, want)
	}
}

// TestArgumentValues: the noted members answer as MemberValues does, and
// arguments the index cannot hold (escaped names, more than maxIndexed
// members) are read again.
func TestArgumentValues(t *testing.T) {
	nine := `{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":{"j":9}}`
	tests := []struct {
		args     string
		complete bool
	}{
		{`{}`, true},
		{`{"owner":"acme","repo":"w","n":[1,{"x":"}"}],"o":{"owner":"evil"}}`, true},
		{` { "owner" : "acme" , "b" : -1.5e3 , "c" : null } `, true},
		{nine[:strings.LastIndex(nine, `,"i"`)] + `}`, true},
		{nine, false},
		{`{"own\u0065r":"acme","repo":"w"}`, false},
		{`{"repo":"w","\u00e9":"x"}`, false},
	}
	for _, tt := range tests {
		r, err := Parse(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":`+tt.args+`}}`, Limits{})
		if err != nil {
			t.Fatalf("%s: %v", tt.args, err)
		}
		if r.args.complete != tt.complete {
			t.Errorf("%s: index complete %v, want %v", tt.args, r.args.complete, tt.complete)
		}
		checkArgumentValues(t, &r)
	}
}

// Body4K is a tools/call of about 4 KiB, as the benchmarks use.
func body4K() string {
	return `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"github.create_pull_request","arguments":{"owner":"acme","repo":"widgets","title":"Fix the frobnicator","head":"fix-frob","base":"main","body":"` +
		strings.Repeat("This change fixes the frobnicator when the widget count overflows. ", 58) + `","draft":false,"labels":["bug","p1"]}}}`
}

func BenchmarkParse4K(b *testing.B) {
	body := body4K()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(body, Limits{}); err != nil {
			b.Fatal(err)
		}
	}
}

// checkMembers compares Members and Unquote with encoding/json on a
// validated object.
func checkMembers(t *testing.T, obj string) {
	t.Helper()
	var want map[string]json.RawMessage
	if err := json.Unmarshal([]byte(obj), &want); err != nil {
		t.Fatal(err)
	}
	n := 0
	Members(obj, func(name, value string) bool {
		n++
		w, ok := want[name]
		if !ok || string(w) != value {
			t.Fatalf("member %q = %q, encoding/json reads %q (present %v)", name, value, w, ok)
		}
		if value[0] == '"' {
			var ws string
			if err := json.Unmarshal([]byte(value), &ws); err != nil || Unquote(value) != ws {
				t.Fatalf("Unquote(%q) = %q, encoding/json reads %q", value, Unquote(value), ws)
			}
		}
		if value[0] == '[' {
			var wl []json.RawMessage
			_ = json.Unmarshal([]byte(value), &wl)
			i := 0
			Elements(value, func(v string) bool {
				if i >= len(wl) || string(wl[i]) != v {
					t.Fatalf("element %d of %q = %q", i, value, v)
				}
				i++
				return true
			})
			if i != len(wl) {
				t.Fatalf("%d elements of %q, encoding/json reads %d", i, value, len(wl))
			}
		}
		return true
	})
	if n != len(want) {
		t.Fatalf("%d members of %q, encoding/json reads %d", n, obj, len(want))
	}
}

func TestMembers(t *testing.T) {
	for _, obj := range []string{`{}`, `{"a":1}`, `{ "a" : "x\u00e9\"" , "b":[1, {"c":"]"}, "s"] ,"n":null,"t":true,"f":-1.5e3}`,
		`{"emoji":"\ud83d\ude00","k":{"x":"}"}}`} {
		if _, err := Parse(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":`+obj+`}}`, Limits{}); err != nil {
			t.Fatalf("%s: %v", obj, err)
		}
		checkMembers(t, obj)
	}
	// Not validated input: no panic, no result past the damage.
	for _, bad := range []string{``, `{`, `{"a`, `{"a":`, `{"a":"\u12`, `[`, `{"a":[1,`} {
		Members(bad, func(name, value string) bool { return true })
		Elements(bad, func(string) bool { return true })
		Unquote(bad)
	}
	if got := Unquote(`"\u12"`); got != "" {
		t.Fatalf("Unquote of a cut escape = %q", got)
	}
}

// FuzzSameName checks the duplicate-name comparison against
// strings.EqualFold, which it must equal.
func FuzzSameName(f *testing.F) {
	for _, p := range [][2]string{{"name", "NAME"}, {"kind", "\u212aind"}, {"kind", "\u212aIND"}, {"s", "\u017f"}, {"ab", "aB"}, {"a\xff", "A\xff"}, {"", ""}, {"a", "b"}} {
		f.Add(p[0], p[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		if got, want := sameName(a, b), strings.EqualFold(a, b); got != want {
			t.Fatalf("sameName(%q, %q) = %v, strings.EqualFold %v", a, b, got, want)
		}
	})
}
