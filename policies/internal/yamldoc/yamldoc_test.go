package yamldoc

import (
	"errors"
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
	err := Decode(Doc{Line: 10, Data: []byte("a: x\nb: y\n")}, &v)
	if err == nil || !strings.Contains(err.Error(), "line 11: field b not found") {
		t.Errorf("unknown field error %v does not name line 11", err)
	}
}
