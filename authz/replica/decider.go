package replica

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mandate-dev/mandate/authz"
	"github.com/mandate-dev/mandate/authz/decisioncache"
	"github.com/mandate-dev/mandate/authz/decisionlog"
	"github.com/mandate-dev/mandate/authz/identity"
	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/authz/mcp"
)

// decider builds what the Check server decides with: identity, cache,
// decision log, mandate verifier, limits.
func (r *Replica) decider(ctx context.Context) (authz.Config, error) {
	c := &r.cfg
	var tds []spiffeid.TrustDomain
	for _, name := range c.TrustDomains {
		td, err := identity.ParseTrustDomain(name)
		if err != nil {
			return authz.Config{}, fmt.Errorf("trust domain: %w", err)
		}
		tds = append(tds, td)
	}
	var proxies []spiffeid.ID
	for _, p := range c.TrustedProxies {
		id, err := identity.ParseID(p)
		if err != nil {
			return authz.Config{}, fmt.Errorf("trusted proxy: %w", err)
		}
		proxies = append(proxies, id)
	}
	resolver, err := identity.New(identity.Config{TrustDomains: tds, TrustedProxies: proxies, RequireXFCCBy: c.RequireXFCCBy})
	if err != nil {
		return authz.Config{}, err
	}
	var cache *decisioncache.Cache
	if c.CacheTTL > 0 {
		if cache, err = decisioncache.New(decisioncache.Config{MaxEntries: c.CacheSize, TTL: c.CacheTTL}); err != nil {
			return authz.Config{}, err
		}
		r.opened.Push(cache.Close)
	}
	var dlog authz.DecisionLogger
	if c.DecisionLog != nil {
		// The log outlives ctx: it is closed (and flushed) after the
		// Check server stopped.
		l, err := decisionlog.New(context.WithoutCancel(ctx), decisionlog.Config{
			Out:          slog.New(slog.NewJSONHandler(c.DecisionLog, nil)),
			OnDrop:       r.metrics.LogDropped,
			MCPArguments: c.LogMCPArguments,
			Redact:       c.LogRedact,
		})
		if err != nil {
			return authz.Config{}, err
		}
		r.opened.Push(l.Close)
		dlog = l
	}
	if r.verifier, err = mandate.NewVerifier(mandate.VerifierConfig{Issuer: c.MandateIssuer, Audience: c.MandateAudience}); err != nil {
		return authz.Config{}, err
	}
	if c.MandateKeysFile != "" {
		keys, err := mandate.ReadKeyFile(c.MandateKeysFile)
		if err != nil {
			return authz.Config{}, err
		}
		if err := r.verifier.SetKeys(keys); err != nil {
			return authz.Config{}, err
		}
	}
	codec, err := authz.NewCodec(c.MaxRequestBytes)
	if err != nil {
		return authz.Config{}, err
	}
	staleMode := authz.StaleDenyAll
	if c.StaleMode == StaleSensitive {
		staleMode = authz.StaleDenySensitive
	}
	return authz.Config{
		Identity:  resolver,
		State:     r.state,
		Cache:     cache,
		Log:       dlog,
		Metrics:   r.metrics,
		Mandates:  authz.NewMandates(r.verifier),
		StaleMode: staleMode,
		Logger:    r.log,
		MCPLimits: mcp.Limits{MaxBytes: c.MCPMaxBody, MaxDepth: c.MCPMaxDepth},

		MaxHeaderBytes:         c.MaxHeaderBytes,
		RequirePeerCertificate: c.RequirePeerCertificate,
		Codec:                  codec,
	}, nil
}
