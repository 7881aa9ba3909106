package doctest

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// Update rewrites, in the document at path, the output shown for each
// console step of results that does not match with what it printed: the
// way to refresh a document after an intended change of output
// (go test ./docs -update). Results must come from that document.
func Update(path string, results []Result) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("doctest: %w", err)
	}
	lines := strings.Split(string(b), "\n")
	var todo []Result
	for _, r := range results {
		if r.Ran && r.Step.Kind == Console && !r.OK() {
			todo = append(todo, r)
		}
	}
	// Bottom up, so that earlier line numbers stay right.
	sort.Slice(todo, func(i, j int) bool { return todo[i].Step.WantLine > todo[j].Step.WantLine })
	for _, r := range todo {
		at := r.Step.WantLine - 1
		if at < 0 || at+len(r.Step.Want) > len(lines) {
			return fmt.Errorf("doctest: %s: line %d out of range", path, r.Step.WantLine)
		}
		for k, w := range r.Step.Want {
			if lines[at+k] != w && strings.TrimPrefix(lines[at+k], indentOf(lines[at+k])) != w {
				return fmt.Errorf("doctest: %s:%d changed since it was parsed", path, at+k+1)
			}
		}
		ind := ""
		if len(r.Step.Want) > 0 {
			ind = indentOf(lines[at])
		}
		got := make([]string, len(r.Got))
		for k, g := range r.Got {
			got[k] = ind + g
		}
		lines = append(lines[:at], append(got, lines[at+len(r.Step.Want):]...)...)
	}
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		return fmt.Errorf("doctest: %w", err)
	}
	return nil
}

func indentOf(s string) string { return s[:len(s)-len(strings.TrimLeft(s, " "))] }
