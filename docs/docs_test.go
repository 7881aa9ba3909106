package docs_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mandate-dev/mandate/docs/doctest"
)

var update = flag.Bool("update", false, "rewrite the outputs the documents show with what the commands printed")

// The documents whose console and sh blocks run.
var documents = []string{"README.md", "cp/README.md", "cp/MANDATES.md", "envoy/README.md"}

// TestDocs runs every walk-through of the documents, as a new user would
// from a clean clone. Run one with, e.g.:
//
//	go test ./docs -run 'TestDocs/cp/README.md'
//
// A failure names the document line of the command, the command, what the
// document shows and what it printed. After an intended change of output,
// -update rewrites the outputs the documents show.
func TestDocs(t *testing.T) {
	if testing.Short() {
		t.Skip("doc walk-throughs start servers and build the binaries: not in -short")
	}
	ctx := t.Context()
	isolate := doctest.CanIsolate(ctx)
	if !isolate {
		t.Log("unshare -rn is not available: walk-throughs share the machine's network (their documented ports may collide)")
	}
	bin := filepath.Join(t.TempDir(), "bin")
	if err := doctest.Prebuild(ctx, "..", bin); err != nil {
		t.Fatal(err)
	}
	r := doctest.Runner{Repo: "..", Isolate: isolate, Bin: bin}
	for _, doc := range documents {
		text, err := os.ReadFile(filepath.Join("..", doc))
		if err != nil {
			t.Fatal(err)
		}
		wts, err := doctest.Parse(doc, string(text))
		if err != nil {
			t.Fatal(err)
		}
		t.Run(doc, func(t *testing.T) {
			if len(wts) == 0 {
				t.Skip("no console or sh blocks")
			}
			var all []doctest.Result
			for _, w := range wts {
				t.Run(w.Name, func(t *testing.T) {
					all = append(all, runWalkthrough(ctx, t, r, doc, w)...)
				})
			}
			if *update {
				// Once per document: line numbers are those of the parse.
				if err := doctest.Update(filepath.Join("..", doc), all); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func runWalkthrough(ctx context.Context, t *testing.T, r doctest.Runner, doc string, w doctest.Walkthrough) []doctest.Result {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	results, err := r.Run(ctx, t.TempDir(), w)
	rerun := fmt.Sprintf("re-run: go test ./docs -run 'TestDocs/%s/%s'", doc, w.Name)
	for _, res := range results {
		if res.OK() {
			continue
		}
		if !res.Ran {
			t.Errorf("%s: not reached: %s", res.Step.Name(), firstLine(res.Step.Command))
			break
		}
		if res.Step.Kind == doctest.Shell {
			t.Errorf("%s: sh block failed (exit %d):\n%s\noutput:\n%s\n%s", res.Step.Name(), res.Code,
				indent(res.Step.Command), indent(strings.Join(res.Got, "\n")), rerun)
			continue
		}
		t.Errorf("%s: $ %s\n--- the document shows:\n%s\n--- it printed (exit %d):\n%s\n%s", res.Step.Name(), res.Step.Command,
			indent(strings.Join(res.Step.Want, "\n")), res.Code, indent(strings.Join(res.Got, "\n")), rerun)
	}
	if err != nil {
		t.Errorf("%v\n%s", err, rerun)
	}
	return results
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func indent(s string) string {
	if s == "" {
		return "    (nothing)"
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
