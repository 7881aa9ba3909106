// Package frontproxy is an Envoy ext_authz contract proxy for tests: a small
// HTTP front proxy that reproduces what Envoy's ext_authz HTTP filter (gRPC
// mode, defaults) sends to and accepts from an authorization server, so the
// end-to-end suite can run mandate-authz where Envoy cannot be installed. It
// is not Envoy; docs/README in e2e/ lists what it reproduces and what not.
package frontproxy

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
)

// Envoy's ext_authz defaults.
const (
	DefaultTimeout       = 200 * time.Millisecond
	DefaultStatusOnError = http.StatusForbidden
)

// Route is one route of the proxy's single virtual host, matched by path
// prefix (the longest matching prefix wins). It carries the route's
// ExtAuthzPerRoute settings.
type Route struct {
	Prefix string `json:"prefix"`
	// ContextExtensions become CheckRequest.attributes.context_extensions
	// (ExtAuthzPerRoute.check_settings.context_extensions).
	ContextExtensions map[string]string `json:"context_extensions,omitempty"`
	// Disabled skips the authorization check (ExtAuthzPerRoute.disabled).
	Disabled bool `json:"disabled,omitempty"`
	// WithRequestBody sends the request body with the check
	// (check_settings.with_request_body); nil sends none.
	WithRequestBody *BufferSettings `json:"with_request_body,omitempty"`
}

// BufferSettings is ext_authz's BufferSettings: the body is buffered up to
// MaxRequestBytes; a longer body is answered 413 without a check unless
// AllowPartialMessage, which sends the first MaxRequestBytes with the
// header x-envoy-auth-partial-body: true. PackAsBytes sends it in
// raw_body, else in body (as UTF-8).
type BufferSettings struct {
	MaxRequestBytes     uint32 `json:"max_request_bytes"`
	AllowPartialMessage bool   `json:"allow_partial_message,omitempty"`
	PackAsBytes         bool   `json:"pack_as_bytes,omitempty"`
}

// HeaderPartialBody marks a check request carrying part of the body.
const HeaderPartialBody = "x-envoy-auth-partial-body"

// Config configures a Proxy.
type Config struct {
	// Authz is the ext_authz gRPC client (see DialAuthz). Required.
	Authz authv3.AuthorizationClient
	// Upstream is the base URL requests are forwarded to (scheme and host).
	Upstream *url.URL
	// Routes; a request matching none gets 404 (no route) and is neither
	// checked nor forwarded. Empty = one route "/" without extensions.
	Routes []Route
	// Timeout of one Check call (default 200ms).
	Timeout time.Duration
	// StatusOnError is the HTTP status sent on a Check error (default 403).
	StatusOnError int
	// IncludePeerCertificate fills source.certificate.
	IncludePeerCertificate bool
	// LocalPrincipal is destination.principal on mTLS connections: the
	// URI SAN of the proxy's own certificate. Empty on plaintext ones.
	LocalPrincipal string
	// Logger; default slog.Default().
	Logger *slog.Logger
	// Now; default time.Now (tests pin request.time with it).
	Now func() time.Time
}

func (c *Config) validate() error {
	if c.Authz == nil {
		return errors.New("frontproxy: config needs an Authz client")
	}
	if c.Upstream == nil || c.Upstream.Host == "" || (c.Upstream.Scheme != "http" && c.Upstream.Scheme != "https") {
		return errors.New("frontproxy: config needs an http(s) Upstream URL with a host")
	}
	if c.Timeout < 0 {
		return fmt.Errorf("frontproxy: negative timeout %v", c.Timeout)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.StatusOnError == 0 {
		c.StatusOnError = DefaultStatusOnError
	}
	if c.StatusOnError < 100 || c.StatusOnError > 599 {
		return fmt.Errorf("frontproxy: bad status_on_error %d", c.StatusOnError)
	}
	if len(c.Routes) == 0 {
		c.Routes = []Route{{Prefix: "/"}}
	}
	seen := map[string]bool{}
	for _, r := range c.Routes {
		if !strings.HasPrefix(r.Prefix, "/") {
			return fmt.Errorf("frontproxy: route prefix %q must start with /", r.Prefix)
		}
		if seen[r.Prefix] {
			return fmt.Errorf("frontproxy: duplicate route prefix %q", r.Prefix)
		}
		seen[r.Prefix] = true
	}
	// Longest prefix first.
	c.Routes = append([]Route(nil), c.Routes...)
	sort.SliceStable(c.Routes, func(i, j int) bool { return len(c.Routes[i].Prefix) > len(c.Routes[j].Prefix) })
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// match returns the route for a :path value (query excluded, no
// normalization: Envoy's defaults do not normalize either).
func (c *Config) match(path string) (Route, bool) {
	p, _, _ := strings.Cut(path, "?")
	for _, r := range c.Routes {
		if strings.HasPrefix(p, r.Prefix) {
			return r, true
		}
	}
	return Route{}, false
}
