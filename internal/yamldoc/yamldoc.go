// Package yamldoc splits multi-document YAML streams and decodes each
// document strictly (unknown fields and duplicate keys are errors).
package yamldoc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// MaxSize is the largest YAML stream Split accepts.
const MaxSize = 4 << 20

// Doc is one document of a YAML stream.
type Doc struct {
	// Line is the 1-based line of the stream the document starts on.
	Line int
	// Data holds the document's bytes, without its "---" marker line.
	Data []byte
}

// Split cuts a YAML stream into documents at "---" marker lines. A
// document marker at the start of a line always ends the previous
// document in YAML, even inside block scalars, so splitting on lines
// agrees with a YAML parser. Content after "---" on the same line starts
// the next document. Documents holding only blanks and comments are
// kept; Decode reports them as empty.
func Split(data []byte) ([]Doc, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("yamldoc: stream of %d bytes exceeds the %d byte limit", len(data), MaxSize)
	}
	var docs []Doc
	start, startLine := 0, 1
	line := 1
	for off := 0; off < len(data); {
		end := bytes.IndexByte(data[off:], '\n')
		next := len(data)
		if end >= 0 {
			next = off + end + 1
		}
		l := data[off:next]
		if isMarker(l) {
			if off > start {
				docs = append(docs, Doc{Line: startLine, Data: data[start:off]})
			}
			// Content after the marker on the same line belongs to the
			// next document: keep it, blanking the marker itself.
			rest := bytes.TrimLeft(l[3:], " \t")
			if len(bytes.TrimSpace(rest)) > 0 && rest[0] != '#' {
				start, startLine = off+(len(l)-len(rest)), line
			} else {
				start, startLine = next, line+1
			}
		}
		off = next
		line++
	}
	if start < len(data) {
		docs = append(docs, Doc{Line: startLine, Data: data[start:]})
	}
	return docs, nil
}

func isMarker(l []byte) bool {
	if !bytes.HasPrefix(l, []byte("---")) {
		return false
	}
	return len(l) == 3 || l[3] == ' ' || l[3] == '\t' || l[3] == '\n' || l[3] == '\r'
}

// ErrEmpty is returned by Decode for a document without content.
var ErrEmpty = errors.New("yamldoc: empty document")

// Error is a YAML problem at a place in the stream: what went wrong, the
// 1-based line and column, and the offending line with a caret under the
// column. Errors reads "LINE:COL: message" followed by the snippet, so a
// caller prefixing the file name ("f.yaml:" + err) gets the form editors
// and compilers use.
type Error struct {
	Line, Column int
	Msg          string
	// Snippet is the source line (and the one before it, for context)
	// with a caret marking the column.
	Snippet string
}

func (e *Error) Error() string {
	if e.Snippet == "" {
		return fmt.Sprintf("%d:%d: %s", e.Line, e.Column, e.Msg)
	}
	return fmt.Sprintf("%d:%d: %s\n%s", e.Line, e.Column, e.Msg, e.Snippet)
}

// Decode decodes one document into v, rejecting unknown fields, duplicate
// keys and a second document. Errors are *Error, with lines counted from
// the start of the stream the document was split from.
func Decode(d Doc, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(d.Data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return ErrEmpty
		}
		return locate(d, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return locate(d, err)
		}
		return newError(d, extra.Line, extra.Column, "more than one document")
	}
	return nil
}

var (
	lineRe      = regexp.MustCompile(`^(?:yaml: )?line (\d+): (.*)$`)
	fieldNameRe = regexp.MustCompile(`^field (\S+) not found`)
)

// locate turns a yaml error into an *Error. yaml reports lines only: the
// column is that of the key or value the message names on that line (an
// unknown field, a value of the wrong type), else of the line's first
// character that is not blank.
func locate(d Doc, err error) error {
	msgs := []string{err.Error()}
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msgs = te.Errors
	}
	m := lineRe.FindStringSubmatch(msgs[0])
	if m == nil {
		return fmt.Errorf("yamldoc: %w", err)
	}
	line, convErr := strconv.Atoi(m[1])
	if convErr != nil {
		return fmt.Errorf("yamldoc: %w", err)
	}
	texts := []string{m[2]}
	for _, other := range msgs[1:] {
		if om := lineRe.FindStringSubmatch(other); om != nil {
			texts = append(texts, "line "+shift(om[1], d.Line-1)+": "+om[2])
		} else {
			texts = append(texts, other)
		}
	}
	col := column(d.Data, line, m[2])
	return newError(d, line, col, strings.Join(texts, "; "))
}

func shift(n string, by int) string {
	v, err := strconv.Atoi(n)
	if err != nil {
		return n
	}
	return strconv.Itoa(v + by)
}

// column finds, on a document-relative line, where the problem msg
// describes starts.
func column(data []byte, line int, msg string) int {
	var root yaml.Node
	if fm := fieldNameRe.FindStringSubmatch(msg); fm != nil && yaml.Unmarshal(data, &root) == nil {
		if n := findKey(&root, line, fm[1]); n != nil {
			return n.Column
		}
	}
	if yaml.Unmarshal(data, &root) == nil {
		if n := firstOnLine(&root, line); n != nil {
			return n.Column
		}
	}
	src := lineOf(data, line)
	return len(src) - len(bytes.TrimLeft(src, " \t")) + 1
}

func findKey(n *yaml.Node, line int, name string) *yaml.Node {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k := n.Content[i]; k.Line == line && k.Value == name {
				return k
			}
		}
	}
	for _, c := range n.Content {
		if f := findKey(c, line, name); f != nil {
			return f
		}
	}
	return nil
}

// firstOnLine returns the leftmost value node on line (a scalar, or the
// start of a flow collection), skipping the document node.
func firstOnLine(n *yaml.Node, line int) *yaml.Node {
	var best *yaml.Node
	var walk func(*yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind != yaml.DocumentNode && n.Line == line && (best == nil || n.Column < best.Column) {
			best = n
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(n)
	return best
}

func lineOf(data []byte, line int) []byte {
	for i := 1; i < line; i++ {
		nl := bytes.IndexByte(data, '\n')
		if nl < 0 {
			return nil
		}
		data = data[nl+1:]
	}
	if nl := bytes.IndexByte(data, '\n'); nl >= 0 {
		data = data[:nl]
	}
	return bytes.TrimRight(data, "\r")
}

// maxSnippet bounds how much of one line a snippet shows.
const maxSnippet = 120

// newError builds an *Error at a document-relative line and column.
func newError(d Doc, line, col int, msg string) *Error {
	abs := line + d.Line - 1
	var b strings.Builder
	width := len(strconv.Itoa(abs))
	row := func(n int, text []byte) {
		if len(text) > maxSnippet {
			text = append(text[:maxSnippet:maxSnippet], "..."...)
		}
		fmt.Fprintf(&b, "  %*d | %s\n", width, n, strings.ToValidUTF8(string(text), "\uFFFD"))
	}
	if line > 1 {
		row(abs-1, lineOf(d.Data, line-1))
	}
	row(abs, lineOf(d.Data, line))
	// The caret line copies the tabs before the column, so it lines up
	// whatever the terminal's tab width.
	src := lineOf(d.Data, line)
	pad := make([]byte, 0, maxSnippet)
	for i := 0; i < col-1 && i < maxSnippet; i++ {
		if i < len(src) && src[i] == '\t' {
			pad = append(pad, '\t')
		} else {
			pad = append(pad, ' ')
		}
	}
	fmt.Fprintf(&b, "  %*s | %s^", width, "", pad)
	return &Error{Line: abs, Column: col, Msg: msg, Snippet: b.String()}
}

// Locate places the error of a decoder that reports no position, or only
// a line, in the YAML data it read (sigs.k8s.io/yaml's strict decoding
// goes through JSON and names fields, not places): it returns an *Error
// at the line given, or at the key an unknown field or a mistyped field
// names, with the snippet; other errors come back unchanged.
func Locate(data []byte, err error) error {
	msg := err.Error()
	for changed := true; changed; {
		changed = false
		for _, p := range []string{"error converting YAML to JSON: ", "error unmarshaling JSON: ",
			"while decoding JSON: ", "json: ", "yaml: unmarshal errors:", "yaml: "} {
			if rest, ok := strings.CutPrefix(msg, p); ok {
				msg, changed = strings.TrimSpace(rest), true
			}
		}
	}
	first, _, _ := strings.Cut(msg, "\n")
	d := Doc{Line: 1, Data: data}
	if m := lineRe.FindStringSubmatch(first); m != nil {
		if line, convErr := strconv.Atoi(m[1]); convErr == nil {
			return newError(d, line, column(data, line, m[2]), m[2])
		}
	}
	var name string
	if m := unknownFieldRe.FindStringSubmatch(first); m != nil {
		name = m[1]
	} else if m := structFieldRe.FindStringSubmatch(first); m != nil {
		name = m[1]
	}
	var root yaml.Node
	if name != "" && yaml.Unmarshal(data, &root) == nil {
		if n := findKeyAnywhere(&root, name); n != nil {
			return newError(d, n.Line, n.Column, first)
		}
	}
	return err
}

var (
	unknownFieldRe = regexp.MustCompile(`unknown field "([^"]+)"`)
	// "Go struct field Rule.rules.maxTTL of type string": the JSON name
	// is the last element.
	structFieldRe = regexp.MustCompile(`Go struct field (?:\S+\.)?([^.\s]+) of type`)
)

// findKeyAnywhere returns the first mapping key named name, in document
// order.
func findKeyAnywhere(n *yaml.Node, name string) *yaml.Node {
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == name {
				return n.Content[i]
			}
			if f := findKeyAnywhere(n.Content[i+1], name); f != nil {
				return f
			}
		}
		return nil
	}
	for _, c := range n.Content {
		if f := findKeyAnywhere(c, name); f != nil {
			return f
		}
	}
	return nil
}

// Located is err placed in the file name holds: "name:LINE:COL: message"
// and the snippet when Locate finds where, else "name: err".
func Located(name string, data []byte, err error) error {
	if e, ok := Locate(data, err).(*Error); ok {
		return fmt.Errorf("%s:%w", name, e)
	}
	return fmt.Errorf("%s: %w", name, err)
}
