package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestPrintUnified(t *testing.T) {
	full := func(ls ...string) string { return strings.Join(ls, "\n") + "\n" }
	tests := []struct {
		name, change, diff, local, want string
	}{
		{"one change in the middle", "changed",
			full("  a", "  b", "  c", "  d", "- e", "+ E", "  f", "  g", "  h", "  i"), "",
			"diff -u -N live/policy/p local/policy/p\n--- live/policy/p\n+++ local/policy/p\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"},
		{"two hunks far apart", "changed",
			full("- a", "+ A", "  1", "  2", "  3", "  4", "  5", "  6", "  7", "  8", "- z"), "",
			"diff -u -N live/policy/p local/policy/p\n--- live/policy/p\n+++ local/policy/p\n@@ -1,4 +1,4 @@\n-a\n+A\n 1\n 2\n 3\n@@ -7,4 +7,3 @@\n 6\n 7\n 8\n-z\n"},
		{"added", "added", "", "x\ny\n",
			"diff -u -N /dev/null local/policy/p\n--- /dev/null\n+++ local/policy/p\n@@ -0,0 +1,2 @@\n+x\n+y\n"},
		{"deleted", "deleted", "", "",
			"diff -u -N live/policy/p /dev/null\n--- live/policy/p\n+++ /dev/null\n@@ policy/p deleted (--prune) @@\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			printUnified(&b, "p", tt.change, tt.diff, []byte(tt.local))
			if b.String() != tt.want {
				t.Fatalf("got:\n%s\nwant:\n%s", b.String(), tt.want)
			}
		})
	}
}
