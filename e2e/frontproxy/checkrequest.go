package frontproxy

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// hopByHop are connection-level headers Envoy's codecs consume; they never
// reach filters nor the upstream.
var hopByHop = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Te", "Trailer"}

// downstreamHeaders returns the request headers as Envoy's connection
// manager hands them to its filters (with default settings): hop-by-hop
// headers dropped, x-forwarded-proto set to the downstream scheme,
// x-request-id generated when absent. The result is also what the upstream
// receives, after the authorization server's mutations.
func downstreamHeaders(r *http.Request, scheme string) http.Header {
	h := r.Header.Clone()
	if h == nil {
		h = http.Header{}
	}
	for _, k := range hopByHop {
		h.Del(k)
	}
	h.Set("X-Forwarded-Proto", scheme)
	if h.Get("X-Request-Id") == "" {
		h.Set("X-Request-Id", newUUID())
	}
	return h
}

func requestScheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

func protocolString(r *http.Request) string {
	switch {
	case r.ProtoMajor == 2:
		return "HTTP/2"
	case r.ProtoMajor == 1 && r.ProtoMinor == 0:
		return "HTTP/1.0"
	default:
		return "HTTP/1.1"
	}
}

// buildCheckRequest builds the CheckRequest Envoy's ext_authz filter would
// send for r, with the (already prepared) downstream headers h.
func (p *Proxy) buildCheckRequest(r *http.Request, h http.Header, route Route, start time.Time) *authv3.CheckRequest {
	scheme := requestScheme(r)
	headers := make(map[string]string, len(h)+4)
	for k, vs := range h {
		key := strings.ToLower(k)
		// Envoy merges repeated headers into one value joined by ",".
		headers[key] = sanitizeUTF8(strings.Join(vs, ","))
	}
	// For HTTP/1 Envoy's codec turns the request line and Host into
	// pseudo-headers; there is no "host" entry.
	headers[":authority"] = sanitizeUTF8(r.Host)
	headers[":method"] = r.Method
	headers[":path"] = sanitizeUTF8(r.RequestURI)
	headers[":scheme"] = scheme

	source := &authv3.AttributeContext_Peer{Address: socketAddress(r.RemoteAddr)}
	// source.service: from x-envoy-downstream-service-cluster, a header any
	// client can set (reproduced so tests can show it is not identity).
	source.Service = h.Get("X-Envoy-Downstream-Service-Cluster")
	dest := &authv3.AttributeContext_Peer{}
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		dest.Address = socketAddress(la.String())
	}
	if r.TLS != nil {
		if len(r.TLS.PeerCertificates) > 0 {
			leaf := r.TLS.PeerCertificates[0]
			source.Principal = certPrincipal(leaf)
			if p.cfg.IncludePeerCertificate {
				source.Certificate = urlEncodedPEM(leaf)
			}
		}
		dest.Principal = p.cfg.LocalPrincipal
	}
	size := int64(-1)
	if cl := h.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil {
			size = n
		}
	}
	return &authv3.CheckRequest{
		Attributes: &authv3.AttributeContext{
			Source:      source,
			Destination: dest,
			Request: &authv3.AttributeContext_Request{
				Time: timestamppb.New(start),
				Http: &authv3.AttributeContext_HttpRequest{
					Id:       strconv.FormatUint(randUint64(), 10),
					Method:   r.Method,
					Headers:  headers,
					Path:     headers[":path"],
					Host:     headers[":authority"],
					Scheme:   scheme,
					Size:     size,
					Protocol: protocolString(r),
				},
			},
			ContextExtensions: copyMap(route.ContextExtensions),
		},
	}
}

// certPrincipal is Envoy's peer principal: the first URI SAN, else the
// first DNS SAN, else the subject.
func certPrincipal(c *x509.Certificate) string {
	if len(c.URIs) > 0 {
		return c.URIs[0].String()
	}
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	return c.Subject.String()
}

// urlEncodedPEM is Envoy's urlEncodedPemEncodedPeerCertificate: the leaf's
// PEM with newline, space, '+', '/' and '=' percent-encoded.
func urlEncodedPEM(c *x509.Certificate) string {
	p := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	return strings.NewReplacer("\n", "%0A", " ", "%20", "+", "%2B", "/", "%2F", "=", "%3D").Replace(p)
}

func socketAddress(hostport string) *corev3.Address {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil
	}
	n, err := strconv.ParseUint(port, 10, 32)
	if err != nil {
		return nil
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       host,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(n)},
	}}}
}

// sanitizeUTF8 replaces each byte of an invalid UTF-8 sequence with '!', as
// Envoy does for header values it puts in protobuf strings.
func sanitizeUTF8(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 {
			b.WriteByte('!')
			i++
			continue
		}
		b.WriteString(s[i : i+n])
		i += n
	}
	return b.String()
}

func copyMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func randUint64() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
