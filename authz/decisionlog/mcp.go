package decisionlog

import (
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"strings"

	"github.com/mandate-dev/mandate/authz/mcp"
)

// redacted replaces the value of a redacted argument.
const redacted = `"[redacted]"`

// mcpAttrs is the "mcp" group of a record: method, tool, resource,
// JSON-RPC id, the arguments' member names and SHA-256, and the
// arguments themselves (redacted) when the logger was told to.
func (l *Logger) mcpAttrs(r *Record) slog.Attr {
	attrs := []any{
		slog.String("method", r.MCPMethod),
		slog.String("tool", r.MCPTool),
		slog.String("resource_uri", r.MCPResource),
		slog.String("request_id", r.MCPRequestID),
	}
	if r.MCPArguments != "" {
		var keys []string
		mcp.Members(r.MCPArguments, func(name, _ string) bool {
			keys = append(keys, name)
			return true
		})
		sum := sha256.Sum256([]byte(r.MCPArguments))
		attrs = append(attrs, slog.Any("argument_keys", keys), slog.String("arguments_sha256", hex.EncodeToString(sum[:])))
		if l.args {
			attrs = append(attrs, slog.String("arguments", Redact(r.MCPArguments, l.redact)))
		}
	}
	return slog.Group("mcp", attrs...)
}

// Redact returns the validated JSON value v with the value of every
// object member named in names (at any depth, ignoring case) replaced by
// "[redacted]".
func Redact(v string, names []string) string {
	var b strings.Builder
	redact(&b, v, names)
	return b.String()
}

func redact(b *strings.Builder, v string, names []string) {
	switch {
	case v == "":
	case v[0] == '{':
		b.WriteByte('{')
		first := true
		mcp.Members(v, func(name, value string) bool {
			if !first {
				b.WriteByte(',')
			}
			first = false
			b.WriteString(quote(name))
			b.WriteByte(':')
			if containsFold(names, name) {
				b.WriteString(redacted)
			} else {
				redact(b, value, names)
			}
			return true
		})
		b.WriteByte('}')
	case v[0] == '[':
		b.WriteByte('[')
		first := true
		mcp.Elements(v, func(value string) bool {
			if !first {
				b.WriteByte(',')
			}
			first = false
			redact(b, value, names)
			return true
		})
		b.WriteByte(']')
	default:
		b.WriteString(v)
	}
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// quote writes s as a JSON string.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20:
			const hexDigits = "0123456789abcdef"
			b.WriteString(`\u00`)
			b.WriteByte(hexDigits[r>>4])
			b.WriteByte(hexDigits[r&0xf])
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}
