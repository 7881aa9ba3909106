package main

import (
	"fmt"
	"io"
	"strings"
)

// diffContext is the number of unchanged lines around a change, as in
// diff -u and kubectl diff.
const diffContext = 3

// printUnified prints one policy's change as a unified diff, as kubectl
// diff does: "--- live/policy/NAME" is what mandate-cp holds, "+++
// local/policy/NAME" what the files hold. lineDiff is mandate-cp's full
// line diff ("  ", "- ", "+ " prefixes); for an added or deleted policy
// it is empty and source (the local file, or nothing) stands for it.
func printUnified(w io.Writer, name, change, lineDiff string, local []byte) {
	var lines []string
	switch change {
	case "added":
		for _, l := range splitLines(string(local)) {
			lines = append(lines, "+ "+l)
		}
	default:
		lines = splitLines(lineDiff)
	}
	from, to := "live/policy/"+name, "local/policy/"+name
	if change == "added" {
		from = "/dev/null"
	}
	if change == "deleted" {
		to = "/dev/null"
	}
	fmt.Fprintf(w, "diff -u -N %s %s\n--- %s\n+++ %s\n", from, to, from, to)
	if change == "deleted" && len(lines) == 0 {
		fmt.Fprintf(w, "@@ policy/%s deleted (--prune) @@\n", name)
		return
	}
	for _, h := range hunks(lines) {
		fmt.Fprint(w, h)
	}
}

func splitLines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// hunks groups a full line diff into unified hunks with diffContext
// lines of context.
func hunks(lines []string) []string {
	kind := func(l string) byte {
		if l == "" {
			return ' '
		}
		return l[0]
	}
	text := func(l string) string {
		if len(l) < 2 {
			return ""
		}
		return l[2:]
	}
	var out []string
	n := len(lines)
	for i := 0; i < n; {
		// Next change.
		for i < n && kind(lines[i]) == ' ' {
			i++
		}
		if i == n {
			break
		}
		start := max(0, i-diffContext)
		end := i
		// Extend while changes are within 2*context of each other.
		for end < n {
			if kind(lines[end]) != ' ' {
				end++
				continue
			}
			j := end
			for j < n && kind(lines[j]) == ' ' && j-end < 2*diffContext+1 {
				j++
			}
			if j < n && kind(lines[j]) != ' ' && j-end <= 2*diffContext {
				end = j
				continue
			}
			break
		}
		stop := min(n, end+diffContext)
		// Line numbers: old counts ' ' and '-', new counts ' ' and '+'.
		oldStart, newStart := 1, 1
		for _, l := range lines[:start] {
			if kind(l) != '+' {
				oldStart++
			}
			if kind(l) != '-' {
				newStart++
			}
		}
		var b strings.Builder
		oldN, newN := 0, 0
		for _, l := range lines[start:stop] {
			switch kind(l) {
			case '-':
				oldN++
				b.WriteString("-" + text(l) + "\n")
			case '+':
				newN++
				b.WriteString("+" + text(l) + "\n")
			default:
				oldN++
				newN++
				b.WriteString(" " + text(l) + "\n")
			}
		}
		if oldN == 0 {
			oldStart--
		}
		if newN == 0 {
			newStart--
		}
		out = append(out, fmt.Sprintf("@@ -%d,%d +%d,%d @@\n", oldStart, oldN, newStart, newN)+b.String())
		i = stop
	}
	return out
}
