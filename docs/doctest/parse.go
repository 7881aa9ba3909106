package doctest

import (
	"bufio"
	"fmt"
	"regexp"
	"strings"
)

// Kind of a block.
const (
	Console = "console" // commands and their expected output
	Shell   = "sh"      // a script that must succeed
)

// Step is one command of a console block, or a whole sh block.
type Step struct {
	File    string   // the Markdown file
	Line    int      // 1-based line of the command (or of the block's first line)
	Kind    string   // Console or Shell
	Command string   // shell text, possibly several lines
	Want    []string // console: the expected output lines
	// WantLine is the 1-based document line of Want's first line (of
	// the line after the command when Want is empty).
	WantLine int
}

// Name is "FILE:LINE", for messages.
func (s Step) Name() string { return fmt.Sprintf("%s:%d", s.File, s.Line) }

// Walkthrough is a sequence of steps run in one shell, in one fresh copy
// of the repository.
type Walkthrough struct {
	File  string
	Name  string
	Steps []Step
}

var (
	markerRe  = regexp.MustCompile(`^<!--\s*doctest:\s*(walkthrough|skip)\b\s*(.*?)\s*-->\s*$`)
	heredocRe = regexp.MustCompile(`<<-?\s*['"]?([A-Za-z_][A-Za-z0-9_]*)['"]?`)
)

// Parse splits a Markdown document into walk-throughs. The first one is
// named after the file's first heading unless a marker names it.
func Parse(file, text string) ([]Walkthrough, error) {
	var (
		out    []Walkthrough
		cur    *Walkthrough
		marker []string // of the last non-blank line before a fence
	)
	start := func(name string) {
		out = append(out, Walkthrough{File: file, Name: name})
		cur = &out[len(out)-1]
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("doctest: %s: %w", file, err)
	}
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		trimmed := strings.TrimSpace(l)
		if m := markerRe.FindStringSubmatch(trimmed); m != nil {
			marker = m[1:]
			continue
		}
		if !strings.HasPrefix(trimmed, "```") {
			if trimmed != "" {
				marker = nil
			}
			continue
		}
		lang := strings.TrimSpace(strings.TrimPrefix(trimmed, "```"))
		indent := l[:len(l)-len(strings.TrimLeft(l, " "))]
		// Collect the block; first is the 1-based line of its first line.
		first := i + 2
		var body []string
		for i++; i < len(lines) && strings.TrimSpace(lines[i]) != "```"; i++ {
			body = append(body, strings.TrimPrefix(lines[i], indent))
		}
		if i == len(lines) {
			return nil, fmt.Errorf("doctest: %s:%d: unterminated code block", file, first-1)
		}
		m := marker
		marker = nil
		if lang != Console && lang != Shell {
			continue
		}
		if m != nil && m[0] == "skip" {
			continue
		}
		if m != nil && m[0] == "walkthrough" {
			if m[1] == "" {
				return nil, fmt.Errorf("doctest: %s:%d: walkthrough marker without a name", file, first-2)
			}
			start(m[1])
		} else if cur == nil {
			start("main")
		}
		if lang == Shell {
			cur.Steps = append(cur.Steps, Step{File: file, Line: first, Kind: Shell, Command: strings.Join(body, "\n")})
			continue
		}
		steps, err := parseConsole(file, first, body)
		if err != nil {
			return nil, err
		}
		cur.Steps = append(cur.Steps, steps...)
	}
	return out, nil
}

// parseConsole splits a console block into commands and their outputs.
func parseConsole(file string, first int, body []string) ([]Step, error) {
	var steps []Step
	for j := 0; j < len(body); {
		l := body[j]
		if !strings.HasPrefix(l, "$ ") {
			if strings.TrimSpace(l) == "" {
				j++
				continue
			}
			return nil, fmt.Errorf("doctest: %s:%d: output %q before any command ($ ...)", file, first+j, l)
		}
		st := Step{File: file, Line: first + j, Kind: Console}
		cmd := []string{strings.TrimPrefix(l, "$ ")}
		j++
		// Continuations: trailing backslash, open quotes, here-documents.
		for {
			last := cmd[len(cmd)-1]
			if strings.HasSuffix(last, "\\") && j < len(body) {
				cmd = append(cmd, body[j])
				j++
				continue
			}
			if m := heredocRe.FindStringSubmatch(last); m != nil {
				for j < len(body) {
					cmd = append(cmd, body[j])
					j++
					if body[j-1] == m[1] {
						break
					}
				}
			}
			break
		}
		st.Command = strings.Join(cmd, "\n")
		st.WantLine = first + j
		for j < len(body) && !strings.HasPrefix(body[j], "$ ") {
			st.Want = append(st.Want, body[j])
			j++
		}
		for len(st.Want) > 0 && strings.TrimSpace(st.Want[len(st.Want)-1]) == "" {
			st.Want = st.Want[:len(st.Want)-1]
		}
		steps = append(steps, st)
	}
	return steps, nil
}
