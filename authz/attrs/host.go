package attrs

import (
	"errors"
	"net/netip"
	"strings"
)

// MaxHostLength is the longest host name (without port) accepted.
const MaxHostLength = 253

// Host is Mandate's one host normalizer: it turns the :authority of a
// request into the host policies and mandate scopes match, or refuses it.
// Everything reading a host (the replica, policy tests, scopes) takes its
// result; nothing else strips ports or folds case.
//
//   - "" stays "" (no authority: matches no host rule).
//   - An optional ":port" of 1..5 digits (at most 65535) is removed. Two
//     ports ("h:8443:80"), an empty port ("h:") or a non-numeric one is an
//     error, never a guess.
//   - Userinfo ("u@h") is an error.
//   - A bracketed IPv6 literal must parse (no zone) and is returned in
//     its canonical form ("[0:0::1]" -> "[::1]").
//   - A name is lowercased; one trailing dot (a fully qualified name) is
//     removed. Labels are 1..63 bytes of [a-z0-9_-]; an empty label
//     ("a..b", ".a", "a.."), any other byte, or more than 253 bytes is an
//     error.
//   - A name whose last label is numeric is read as an IPv4 address, as
//     URL parsers and resolvers do ("127.1", "0x7f.1"): it must then be a
//     canonical dotted quad, else it is an error.
//
// Errors are plain errors; callers report ReasonBadHost.
func Host(authority string) (string, error) {
	if authority == "" {
		return "", nil
	}
	if len(authority) > MaxHostLength+7 {
		return "", errors.New("authority too long")
	}
	if strings.IndexByte(authority, '@') >= 0 {
		return "", errors.New("authority has userinfo")
	}
	host, port := authority, ""
	if authority[0] == '[' {
		end := strings.IndexByte(authority, ']')
		if end < 0 {
			return "", errors.New("unterminated IPv6 literal")
		}
		host, port = authority[:end+1], authority[end+1:]
		if port != "" && port[0] != ':' {
			return "", errors.New("text after IPv6 literal")
		}
	} else if i := strings.IndexByte(authority, ':'); i >= 0 {
		host, port = authority[:i], authority[i:]
	}
	if port != "" {
		if err := checkPort(port[1:]); err != nil {
			return "", err
		}
	}
	if host == "" {
		return "", errors.New("authority has a port but no host")
	}
	if host[0] == '[' {
		addr, err := netip.ParseAddr(host[1 : len(host)-1])
		if err != nil || !addr.Is6() || addr.Zone() != "" {
			return "", errors.New("bad IPv6 literal")
		}
		if s := addr.String(); s != host[1:len(host)-1] {
			return "[" + s + "]", nil
		}
		return host, nil
	}
	return hostName(host)
}

func checkPort(p string) error {
	if p == "" || len(p) > 5 {
		return errors.New("port must be 1..5 digits")
	}
	n := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c < '0' || c > '9' {
			return errors.New("port must be digits only (one port)")
		}
		n = n*10 + int(c-'0')
	}
	if n > 65535 {
		return errors.New("port over 65535")
	}
	return nil
}

func hostName(h string) (string, error) {
	if len(h) > 1 && h[len(h)-1] == '.' {
		h = h[:len(h)-1]
	}
	if h == "" || len(h) > MaxHostLength {
		return "", errors.New("host name empty or too long")
	}
	lower := true
	label, lastStart := 0, 0
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if label == 0 {
				return "", errors.New("host has an empty label")
			}
			label, lastStart = 0, i+1
			continue
		case c >= 'A' && c <= 'Z':
			lower = false
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return "", errors.New("host has a byte outside [A-Za-z0-9._-]")
		}
		if label++; label > 63 {
			return "", errors.New("host label over 63 bytes")
		}
	}
	if label == 0 {
		return "", errors.New("host has an empty label")
	}
	if !lower {
		h = strings.ToLower(h)
	}
	if last := h[lastStart:]; numeric(last) {
		addr, err := netip.ParseAddr(h)
		if err != nil || !addr.Is4() || addr.String() != h {
			return "", errors.New("host ending in a number is not a canonical IPv4 address")
		}
	}
	return h, nil
}

// numeric reports whether a label would be read as a number by an IPv4
// parser: all decimal digits, or a 0x prefix.
func numeric(l string) bool {
	if strings.HasPrefix(l, "0x") {
		return true
	}
	for i := 0; i < len(l); i++ {
		if l[i] < '0' || l[i] > '9' {
			return false
		}
	}
	return true
}
