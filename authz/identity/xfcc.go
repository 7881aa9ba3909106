package identity

import (
	"errors"
	"strings"
)

// Limits on x-forwarded-client-cert. A chain of proxies adds one element
// each; real chains are a handful long. Cert= and Chain= values (URL-encoded
// PEM) are what make the header big: a trusted proxy that forwards them
// must stay under MaxXFCCLength.
const (
	MaxXFCCLength   = 16 << 10
	MaxXFCCElements = 32
)

// XFCCHeader is the (lowercased) name of the header ParseXFCC reads.
const XFCCHeader = "x-forwarded-client-cert"

// XFCCElement is one element of an x-forwarded-client-cert header: what one
// proxy knew about the client certificate its downstream presented.
type XFCCElement struct {
	By      string
	Hash    string
	Cert    string
	Chain   string
	Subject string
	URI     []string
	DNS     []string
}

// ParseXFCC parses an x-forwarded-client-cert value in Envoy's format:
// elements separated by ',', key=value pairs separated by ';', keys
// case-insensitive among By, Hash, Cert, Chain, Subject, URI and DNS.
// A value is either unquoted (no '"', '=', '\', ',', ';' or control
// characters) or double-quoted; inside quotes ',', ';' and '=' are literal
// and a backslash escapes the next byte: `\"` decodes to '"', any other
// `\x` pair is kept as is (Subject values are RFC 2253 text with their own
// backslash escapes).
//
// It is strict, so that two readers cannot disagree about the same header:
// an empty header, empty element or pair, unknown key, repeated single-value
// key (By, Hash, Cert, Chain, Subject), unterminated quote, text after a
// closing quote or a control character is an error (ReasonBadXFCC); more
// than MaxXFCCLength bytes or MaxXFCCElements elements is
// ReasonXFCCTooLong. URI and DNS may repeat: they are lists. Parsing is one
// linear pass.
func ParseXFCC(v string) ([]XFCCElement, error) {
	if v == "" {
		return nil, &Error{Reason: ReasonBadXFCC, Err: errors.New("empty x-forwarded-client-cert")}
	}
	if len(v) > MaxXFCCLength {
		return nil, newErr(ReasonXFCCTooLong, "x-forwarded-client-cert is %d bytes, max %d", len(v), MaxXFCCLength)
	}
	p := xfccParser{s: v}
	var elems []XFCCElement
	for {
		if len(elems) == MaxXFCCElements {
			return nil, newErr(ReasonXFCCTooLong, "x-forwarded-client-cert has more than %d elements", MaxXFCCElements)
		}
		el, more, err := p.element()
		if err != nil {
			return nil, &Error{Reason: ReasonBadXFCC, Err: err}
		}
		elems = append(elems, el)
		if !more {
			return elems, nil
		}
	}
}

type xfccParser struct {
	s string
	i int
}

const (
	seenBy = 1 << iota
	seenHash
	seenCert
	seenChain
	seenSubject
)

// element parses one element starting at p.i. more reports whether a ','
// followed it.
func (p *xfccParser) element() (el XFCCElement, more bool, err error) {
	var seen int
	for {
		key, err := p.key()
		if err != nil {
			return el, false, err
		}
		val, err := p.value()
		if err != nil {
			return el, false, err
		}
		var bit int
		var dst *string
		switch {
		case strings.EqualFold(key, "by"):
			bit, dst = seenBy, &el.By
		case strings.EqualFold(key, "hash"):
			bit, dst = seenHash, &el.Hash
		case strings.EqualFold(key, "cert"):
			bit, dst = seenCert, &el.Cert
		case strings.EqualFold(key, "chain"):
			bit, dst = seenChain, &el.Chain
		case strings.EqualFold(key, "subject"):
			bit, dst = seenSubject, &el.Subject
		case strings.EqualFold(key, "uri"):
			el.URI = append(el.URI, val)
		case strings.EqualFold(key, "dns"):
			el.DNS = append(el.DNS, val)
		default:
			return el, false, errors.New("unknown key in x-forwarded-client-cert")
		}
		if dst != nil {
			if seen&bit != 0 {
				return el, false, errors.New("repeated key " + strings.ToUpper(key) + " in one x-forwarded-client-cert element")
			}
			seen |= bit
			*dst = val
		}
		if p.i == len(p.s) {
			return el, false, nil
		}
		switch p.s[p.i] {
		case ';':
			p.i++
		case ',':
			p.i++
			return el, true, nil
		default:
			return el, false, errors.New("unexpected character after quoted value in x-forwarded-client-cert")
		}
	}
}

func (p *xfccParser) key() (string, error) {
	start := p.i
	for p.i < len(p.s) {
		c := p.s[p.i]
		if c == '=' {
			if p.i == start {
				return "", errors.New("empty key in x-forwarded-client-cert")
			}
			key := p.s[start:p.i]
			p.i++
			return key, nil
		}
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			if p.i == start && (c == ',' || c == ';') {
				return "", errors.New("empty element or pair in x-forwarded-client-cert")
			}
			return "", errors.New("invalid character in x-forwarded-client-cert key")
		}
		p.i++
	}
	if p.i == start {
		return "", errors.New("empty element or pair at the end of x-forwarded-client-cert")
	}
	return "", errors.New("key without value in x-forwarded-client-cert")
}

func (p *xfccParser) value() (string, error) {
	if p.i < len(p.s) && p.s[p.i] == '"' {
		return p.quoted()
	}
	start := p.i
	for ; p.i < len(p.s); p.i++ {
		c := p.s[p.i]
		switch {
		case c == ',' || c == ';':
			return p.s[start:p.i], nil
		case c == '"' || c == '=' || c == '\\':
			return "", errors.New("unquoted x-forwarded-client-cert value has '\"', '=' or '\\'")
		case isCTL(c):
			return "", errors.New("control character in x-forwarded-client-cert")
		}
	}
	return p.s[start:], nil
}

// quoted parses a quoted value; p.i is at the opening quote.
func (p *xfccParser) quoted() (string, error) {
	p.i++
	start := p.i
	escapedQuote := false
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			raw := p.s[start:p.i]
			p.i++
			if escapedQuote {
				return strings.ReplaceAll(raw, `\"`, `"`), nil
			}
			return raw, nil
		case c == '\\':
			if p.i+1 == len(p.s) {
				return "", errors.New("unterminated quoted value in x-forwarded-client-cert")
			}
			n := p.s[p.i+1]
			if isCTL(n) {
				return "", errors.New("control character in x-forwarded-client-cert")
			}
			if n == '"' {
				escapedQuote = true
			}
			p.i += 2
		case isCTL(c):
			return "", errors.New("control character in x-forwarded-client-cert")
		default:
			p.i++
		}
	}
	return "", errors.New("unterminated quoted value in x-forwarded-client-cert")
}

func isCTL(c byte) bool { return c < 0x20 || c == 0x7f }
