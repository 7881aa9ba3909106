package mcp

import "strings"

// The functions below read JSON text that Parse has validated (such as
// Request.Arguments): they do not check it again. Given anything else
// they stop early or return partial results, but never panic.

// Members calls yield with the unescaped name and the raw value text of
// each member of the object obj, in order, until yield returns false.
func Members(obj string, yield func(name, value string) bool) {
	i := skipWS(obj, 0)
	if i >= len(obj) || obj[i] != '{' {
		return
	}
	i = skipWS(obj, i+1)
	for i < len(obj) && obj[i] == '"' {
		end := skipString(obj, i)
		name := obj[i:end]
		i = skipWS(obj, end)
		if i >= len(obj) || obj[i] != ':' {
			return
		}
		i = skipWS(obj, i+1)
		vEnd := skipValue(obj, i)
		if vEnd <= i || !yield(Unquote(name), obj[i:vEnd]) {
			return
		}
		i = skipWS(obj, vEnd)
		if i >= len(obj) || obj[i] != ',' {
			return
		}
		i = skipWS(obj, i+1)
	}
}

// MemberValues sets vals[i] to the raw JSON value of the member keys[i]
// of the object obj, leaving it alone when obj has none, in one pass
// over obj.
func MemberValues(obj string, keys, vals []string) {
	if len(keys) == 0 {
		return
	}
	found := 0
	Members(obj, func(name, value string) bool {
		for i, key := range keys {
			if key == name {
				vals[i] = value
				found++
			}
		}
		return found < len(keys)
	})
}

// Elements calls yield with the raw text of each element of the array
// arr, in order, until yield returns false.
func Elements(arr string, yield func(value string) bool) {
	i := skipWS(arr, 0)
	if i >= len(arr) || arr[i] != '[' {
		return
	}
	i = skipWS(arr, i+1)
	for i < len(arr) && arr[i] != ']' {
		end := skipValue(arr, i)
		if end <= i || !yield(arr[i:end]) {
			return
		}
		i = skipWS(arr, end)
		if i >= len(arr) || arr[i] != ',' {
			return
		}
		i = skipWS(arr, i+1)
	}
}

// Unquote returns the contents of the JSON string raw (with its quotes),
// unescaped.
func Unquote(raw string) string {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return ""
	}
	in := raw[1 : len(raw)-1]
	if strings.IndexByte(in, '\\') < 0 {
		return in
	}
	if !validEscapes(in) {
		return ""
	}
	return string(appendUnquoted(nil, in))
}

// validEscapes reports whether every escape in s (string contents) is
// complete, so appendUnquoted cannot read past its end.
func validEscapes(s string) bool {
	sc := scanner{s: s}
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			n, r := sc.escape(i)
			if r != "" {
				return false
			}
			i += n - 1
		}
	}
	return true
}

func skipWS(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at s[i] (its
// opening quote), or len(s).
func skipString(s string, i int) int {
	for i++; i < len(s); {
		j := strings.IndexByte(s[i:], '"')
		if j < 0 {
			return len(s)
		}
		q := i + j
		// The quote ends the string unless an odd run of backslashes
		// escapes it.
		bs := 0
		for k := q - 1; k >= i && s[k] == '\\'; k-- {
			bs++
		}
		if bs%2 == 0 {
			return q + 1
		}
		i = q + 1
	}
	return len(s)
}

// skipValue returns the index after the value starting at s[i].
func skipValue(s string, i int) int {
	if i >= len(s) {
		return i
	}
	switch s[i] {
	case '"':
		return skipString(s, i)
	case '{', '[':
		depth := 0
		for ; i < len(s); i++ {
			switch s[i] {
			case '"':
				i = skipString(s, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return len(s)
	}
	for i < len(s) && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' {
		i++
	}
	return i
}

// Prefetch asks the CPU to start loading a body about to be parsed into
// its caches, without waiting: its last bytes (which the memo reads
// first) and up to its first maxPrefetch bytes, whose memory then loads
// while other work runs. It reads nothing and cannot fault.
func Prefetch(body string) {
	if len(body) > maxPrefetch {
		prefetch(body[len(body)-1:])
		body = body[:maxPrefetch]
	}
	prefetch(body)
}

// maxPrefetch bounds what Prefetch asks for: a few times what the CPU
// can have in flight.
const maxPrefetch = 8 << 10
