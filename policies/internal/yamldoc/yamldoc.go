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

// Decode decodes one document into v, rejecting unknown fields, duplicate
// keys and a second document. Line numbers in errors count from the start
// of the stream the document was split from.
func Decode(d Doc, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(d.Data))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return ErrEmpty
		}
		return shiftLines(err, d.Line-1)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return shiftLines(err, d.Line-1)
		}
		return fmt.Errorf("yaml: line %d: more than one document", extra.Line+d.Line-1)
	}
	return nil
}

var lineRe = regexp.MustCompile(`\bline (\d+)`)

// shiftLines rewrites the document-relative line numbers in a yaml error
// into stream line numbers.
func shiftLines(err error, by int) error {
	if by == 0 {
		return err
	}
	msg := lineRe.ReplaceAllStringFunc(err.Error(), func(m string) string {
		n, convErr := strconv.Atoi(m[len("line "):])
		if convErr != nil {
			return m
		}
		return "line " + strconv.Itoa(n+by)
	})
	return errors.New(msg)
}
