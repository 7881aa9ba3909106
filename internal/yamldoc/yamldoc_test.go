package yamldoc

import (
	"errors"
	"strconv"
	"strings"
	"testing"
)

func TestSplit(t *testing.T) {
	tests := []struct {
		in    string
		docs  []string
		lines []int
	}{
		{"a: 1\n", []string{"a: 1\n"}, []int{1}},
		{"---\na: 1\n---\nb: 2\n", []string{"a: 1\n", "b: 2\n"}, []int{2, 4}},
		{"a: 1\n--- # c\nb: 2", []string{"a: 1\n", "b: 2"}, []int{1, 3}},
		{"--- b: 2\n", []string{"b: 2\n"}, []int{1}},
		{"a: |\n  x\n---x: 1\n", []string{"a: |\n  x\n---x: 1\n"}, []int{1}},
		{"---\n---\n", nil, nil},
	}
	for _, tt := range tests {
		docs, err := Split([]byte(tt.in))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		var lines []int
		for _, d := range docs {
			got = append(got, string(d.Data))
			lines = append(lines, d.Line)
		}
		if strings.Join(got, "|") != strings.Join(tt.docs, "|") || len(lines) != len(tt.lines) {
			t.Errorf("Split(%q) = %q at %v, want %q at %v", tt.in, got, lines, tt.docs, tt.lines)
			continue
		}
		for i := range lines {
			if lines[i] != tt.lines[i] {
				t.Errorf("Split(%q) lines %v, want %v", tt.in, lines, tt.lines)
			}
		}
	}
	if _, err := Split(make([]byte, MaxSize+1)); err == nil {
		t.Error("oversized stream accepted")
	}
}

func TestDecode(t *testing.T) {
	var v struct {
		A string `yaml:"a"`
	}
	if err := Decode(Doc{Line: 1, Data: []byte("# only a comment\n")}, &v); !errors.Is(err, ErrEmpty) {
		t.Errorf("comment-only: %v", err)
	}
	tests := []struct {
		name string
		doc  Doc
		want *Error
	}{
		{"unknown field", Doc{Line: 10, Data: []byte("a: x\nb: y\n")},
			&Error{Line: 11, Column: 1, Msg: `field b not found in type struct { A string "yaml:\"a\"" }`,
				Snippet: "  10 | a: x\n  11 | b: y\n     | ^"}},
		{"unknown field in a flow mapping", Doc{Line: 1, Data: []byte("{a: x, zz: 1}\n")},
			&Error{Line: 1, Column: 8, Msg: `field zz not found in type struct { A string "yaml:\"a\"" }`,
				Snippet: "  1 | {a: x, zz: 1}\n    |        ^"}},
		{"wrong type", Doc{Line: 3, Data: []byte("\na:\n  - 1\n")},
			&Error{Line: 5, Column: 3, Msg: "cannot unmarshal !!seq into string",
				Snippet: "  4 | a:\n  5 |   - 1\n    |   ^"}},
		{"syntax", Doc{Line: 1, Data: []byte("a: x\n  b: [1,\n")},
			&Error{Line: 2}},
		{"two documents", Doc{Line: 5, Data: []byte("a: x\n---\na: y\n")},
			&Error{Line: 6, Column: 1, Msg: "more than one document"}},
		{"tab before the column", Doc{Line: 1, Data: []byte("{a: x,\tzz: 1}\n")},
			&Error{Line: 1, Column: 8, Snippet: "  1 | {a: x,\tzz: 1}\n    |       \t^"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Decode(tt.doc, &v)
			var got *Error
			if !errors.As(err, &got) {
				t.Fatalf("error %v (%T) is not an *Error", err, err)
			}
			if got.Line != tt.want.Line || (tt.want.Column != 0 && got.Column != tt.want.Column) ||
				(tt.want.Msg != "" && got.Msg != tt.want.Msg) || (tt.want.Snippet != "" && got.Snippet != tt.want.Snippet) {
				t.Errorf("got %d:%d %q\n%s\nwant %d:%d %q\n%s", got.Line, got.Column, got.Msg, got.Snippet,
					tt.want.Line, tt.want.Column, tt.want.Msg, tt.want.Snippet)
			}
			if !strings.HasPrefix(got.Error(), strconv.Itoa(got.Line)+":"+strconv.Itoa(got.Column)+": ") {
				t.Errorf("Error() %q does not start with LINE:COL", got.Error())
			}
		})
	}
}

// FuzzDecode: any document decodes or fails with an *Error (or ErrEmpty)
// whose position lies inside the stream; never a panic.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("a: x\nb: y\n"), 1)
	f.Add([]byte("a: [1,\n"), 3)
	f.Add([]byte("{a: x,\tzz: 1}"), 1)
	f.Add([]byte("a:\n  - 1\n---\na: y\n"), 2)
	f.Fuzz(func(t *testing.T, data []byte, line int) {
		if line < 1 || line > 1000 || len(data) > 4096 {
			return
		}
		var v struct {
			A string `yaml:"a"`
			B []int  `yaml:"b"`
		}
		err := Decode(Doc{Line: line, Data: data}, &v)
		var e *Error
		if err == nil || errors.Is(err, ErrEmpty) || !errors.As(err, &e) {
			return
		}
		// YAML breaks lines at \n, \r, NEL, LS and PS.
		breaks := 0
		for _, b := range []string{"\n", "\r", "\u0085", "\u2028", "\u2029"} {
			breaks += strings.Count(string(data), b)
		}
		if e.Line < line || e.Line > line+breaks+1 {
			t.Fatalf("error line %d outside the document (starts at %d): %v", e.Line, line, e)
		}
	})
}

func TestLocate(t *testing.T) {
	data := []byte("a: 1\nrules:\n  - name: x\n    calers: []\n")
	for _, tt := range []struct {
		err       string
		line, col int
	}{
		{`error unmarshaling JSON: while decoding JSON: json: unknown field "calers"`, 4, 5},
		{`error unmarshaling JSON: while decoding JSON: json: cannot unmarshal array into Go struct field Rule.rules.name of type int`, 3, 5},
		{"error converting YAML to JSON: yaml: line 2: mapping values are not allowed in this context", 2, 1},
		{"something else entirely", 0, 0},
		{`json: unknown field "nowhere"`, 0, 0},
	} {
		in := errors.New(tt.err)
		got := Locate(data, in)
		var e *Error
		switch {
		case tt.line == 0 && got != in:
			t.Errorf("%q: placed at %v, want unchanged", tt.err, got)
		case tt.line != 0 && (!errors.As(got, &e) || e.Line != tt.line || e.Column != tt.col):
			t.Errorf("%q: %v, want %d:%d", tt.err, got, tt.line, tt.col)
		}
	}
}
