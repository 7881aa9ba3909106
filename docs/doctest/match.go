package doctest

import (
	"regexp"
	"strings"
)

// What differs from run to run, replaced before comparing.
var normalizers = []struct {
	re   *regexp.Regexp
	repl string
}{
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`), "<time>"},
	{regexp.MustCompile(`\b\d+(\.\d+)?(ns|µs|us|ms|s|m|h)(\d+(\.\d+)?(ns|µs|us|ms|s|m|h))*\b`), "<dur>"},
	{regexp.MustCompile(`\b[0-9a-f]{12,}\b`), "<id>"},
	{regexp.MustCompile(`\b\d{9,}\b`), "<n>"},
	// Store versions count every write, some of which (reports from
	// replicas, in batches) depend on timing.
	{regexp.MustCompile(`\bversion[ =]\d+\b`), "version <n>"},
	// A table cell cut with an ellipsis may end inside an id.
	{regexp.MustCompile(`[A-Za-z0-9_-]+…`), "<cut>…"},
}

// randomToken: base64url ids (mandate ids, key ids), told from names such
// as require-mandates-dry-run by holding both upper and lower case.
var randomToken = regexp.MustCompile(`[A-Za-z0-9_-]{16,}`)

// Normalize rewrites one output line so that runs compare equal: times,
// durations, ids are replaced, runs of blanks collapse (tables realign
// with other id widths), trailing blanks go.
//
// Random tokens go first: a key id such as 4s-ROIx... must not have its
// head read as a duration (or a run of hex or digits inside it as an id)
// and become "<dur><id>" in one run and "<id>" in another.
func Normalize(line string) string {
	line = randomToken.ReplaceAllStringFunc(line, func(s string) string {
		if strings.ToLower(s) != s && strings.ToUpper(s) != s {
			return "<id>"
		}
		return s
	})
	for _, n := range normalizers {
		line = n.re.ReplaceAllString(line, n.repl)
	}
	return strings.Join(strings.Fields(line), " ")
}

// Match reports whether got matches want after normalization; a want line
// "..." matches any number of lines.
func Match(want, got []string) bool {
	w := make([]string, len(want))
	for i, l := range want {
		w[i] = Normalize(l)
	}
	g := make([]string, len(got))
	for i, l := range got {
		g[i] = Normalize(l)
	}
	return match(w, g)
}

func match(w, g []string) bool {
	for len(w) > 0 {
		if w[0] == "..." {
			for k := 0; k <= len(g); k++ {
				if match(w[1:], g[k:]) {
					return true
				}
			}
			return false
		}
		if len(g) == 0 || w[0] != g[0] {
			return false
		}
		w, g = w[1:], g[1:]
	}
	return len(g) == 0
}
