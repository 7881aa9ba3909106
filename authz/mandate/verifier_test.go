package mandate

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

func TestVerifyValid(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.sign(t, nil)
	c, err := f.v.Verify(tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if c.Subject != testSubject || c.Issuer != testIssuer || c.Task != "task-42" || c.Intent != "support.reply" || c.ID != fixedID(1) {
		t.Fatalf("claims = %+v", c)
	}
	if err := c.CheckHolder(testSubject); err != nil {
		t.Fatalf("CheckHolder: %v", err)
	}
	if !c.Scope.Allows("spiffe://example.org/svc/tickets", "tickets", "GET", "/tickets/1", "", "") {
		t.Fatal("verified scope does not allow an in-scope request")
	}
	if c.Scope.compiled == nil {
		t.Fatal("verified scope not compiled")
	}
	hdr := unb64(t, strings.Split(tok, ".")[0])
	if want := `{"alg":"EdDSA","kid":"` + f.kid + `","typ":"mandate+jwt"}`; hdr != want {
		t.Fatalf("header %s, want %s", hdr, want)
	}
	// Second call is a cache hit returning the same claims.
	c2, err := f.v.Verify(tok)
	if err != nil || c2 != c {
		t.Fatalf("cached Verify = %p, %v; want %p", c2, err, c)
	}
}

// TestVerifyRejects covers every way a token can be wrong, each with its
// exact reason.
func TestVerifyRejects(t *testing.T) {
	otherKid, otherPub, otherPriv := seededKey(99)
	tests := []struct {
		name   string
		cfg    func(*VerifierConfig)
		token  func(t *testing.T, f *fixture) string
		want   Reason
		caller string
	}{
		{
			name: "altered payload",
			token: func(t *testing.T, f *fixture) string {
				p := strings.Split(f.sign(t, nil), ".")
				p[1] = b64(strings.Replace(unb64(t, p[1]), testSubject, testOther, 1))
				return strings.Join(p, ".")
			},
			want: ReasonBadSignature,
		},
		{
			name: "altered scope in payload",
			token: func(t *testing.T, f *fixture) string {
				p := strings.Split(f.sign(t, nil), ".")
				p[1] = b64(strings.Replace(unb64(t, p[1]), `"/tickets/**"`, `"/**"`, 1))
				return strings.Join(p, ".")
			},
			want: ReasonBadSignature,
		},
		{
			name: "altered header, same fields",
			token: func(t *testing.T, f *fixture) string {
				p := strings.Split(f.sign(t, nil), ".")
				p[0] = b64(`{"alg":"EdDSA", "kid":"` + f.kid + `","typ":"mandate+jwt"}`)
				return strings.Join(p, ".")
			},
			want: ReasonBadSignature,
		},
		{
			name: "alg none",
			token: func(t *testing.T, f *fixture) string {
				return b64(`{"alg":"none","kid":"`+f.kid+`","typ":"mandate+jwt"}`) + "." + b64(claimsJSON(t, nil)) + "."
			},
			want: ReasonBadAlg,
		},
		{
			name: "HS256 keyed with the public key bytes",
			token: func(t *testing.T, f *fixture) string {
				in := b64(`{"alg":"HS256","kid":"`+f.kid+`","typ":"mandate+jwt"}`) + "." + b64(claimsJSON(t, nil))
				m := hmac.New(sha256.New, f.pub)
				m.Write([]byte(in))
				return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
			},
			want: ReasonBadAlg,
		},
		{
			name: "RS256 header",
			token: func(t *testing.T, f *fixture) string {
				sig := make([]byte, 256)
				rand.Read(sig)
				return b64(`{"alg":"RS256","kid":"`+f.kid+`","typ":"mandate+jwt"}`) + "." + b64(claimsJSON(t, nil)) + "." + base64.RawURLEncoding.EncodeToString(sig)
			},
			want: ReasonBadAlg,
		},
		{
			name: "EdDSA header, signature by another key under our kid",
			token: func(t *testing.T, f *fixture) string {
				return signRaw(otherPriv, f.header(), claimsJSON(t, nil))
			},
			want: ReasonBadSignature,
		},
		{
			name: "unknown kid",
			token: func(t *testing.T, f *fixture) string {
				s, err := NewSigner(otherKid, otherPriv, testIssuer)
				if err != nil {
					t.Fatal(err)
				}
				tok, err := s.Sign(baseClaims(t0))
				if err != nil {
					t.Fatal(err)
				}
				return tok
			},
			want: ReasonUnknownKey,
		},
		{
			name: "missing kid",
			token: func(t *testing.T, f *fixture) string {
				return signRaw(f.priv, `{"alg":"EdDSA","typ":"mandate+jwt"}`, claimsJSON(t, nil))
			},
			want: ReasonUnknownKey,
		},
		{
			name: "key not yet valid",
			cfg: func(c *VerifierConfig) {
				c.Keys[0].NotBefore = t0.Add(time.Minute)
			},
			token: func(t *testing.T, f *fixture) string { return f.sign(t, nil) },
			want:  ReasonUnknownKey,
		},
		{
			name: "key past NotAfter",
			cfg: func(c *VerifierConfig) {
				c.Keys[0].NotAfter = t0
			},
			token: func(t *testing.T, f *fixture) string { return f.sign(t, nil) },
			want:  ReasonUnknownKey,
		},
		{
			name: "token issued before its key became valid",
			cfg: func(c *VerifierConfig) {
				c.Keys[0].NotBefore = t0.Add(-time.Minute)
			},
			token: func(t *testing.T, f *fixture) string {
				return f.sign(t, func(c *Claims) {
					c.IssuedAt = t0.Add(-2 * time.Minute).Unix()
					c.NotBefore = c.IssuedAt
				})
			},
			want: ReasonUnknownKey,
		},
		{
			name: "expired",
			token: func(t *testing.T, f *fixture) string {
				return f.sign(t, func(c *Claims) {
					c.IssuedAt = t0.Add(-20 * time.Minute).Unix()
					c.NotBefore = c.IssuedAt
					c.Expiry = t0.Add(-time.Minute).Unix()
				})
			},
			want: ReasonExpired,
		},
		{
			name: "not yet valid",
			token: func(t *testing.T, f *fixture) string {
				return f.sign(t, func(c *Claims) {
					c.NotBefore = t0.Add(5 * time.Minute).Unix()
				})
			},
			want: ReasonNotYetValid,
		},
		{
			name: "issued in the future",
			token: func(t *testing.T, f *fixture) string {
				return f.sign(t, func(c *Claims) {
					c.IssuedAt = t0.Add(5 * time.Minute).Unix()
					c.NotBefore = c.IssuedAt
					c.Expiry = t0.Add(10 * time.Minute).Unix()
				})
			},
			want: ReasonNotYetValid,
		},
		{
			name:  "wrong audience",
			token: func(t *testing.T, f *fixture) string { return f.sign(t, func(c *Claims) { c.Audience = "billing" }) },
			want:  ReasonWrongAudience,
		},
		{
			name: "audience as an array",
			token: func(t *testing.T, f *fixture) string {
				p := strings.Replace(claimsJSON(t, nil), `"aud":"mandate"`, `"aud":["mandate"]`, 1)
				return signRaw(f.priv, f.header(), p)
			},
			want: ReasonBadClaims,
		},
		{
			name: "wrong issuer",
			token: func(t *testing.T, f *fixture) string {
				s, err := NewSigner(f.kid, f.priv, "spiffe://evil.org/mandate/cp")
				if err != nil {
					t.Fatal(err)
				}
				tok, err := s.Sign(baseClaims(t0))
				if err != nil {
					t.Fatal(err)
				}
				return tok
			},
			want: ReasonWrongIssuer,
		},
		{
			name:   "presented by another identity",
			token:  func(t *testing.T, f *fixture) string { return f.sign(t, nil) },
			caller: testOther,
			want:   ReasonWrongHolder,
		},
		{
			name: "delegation chain tampered",
			token: func(t *testing.T, f *fixture) string {
				tok := f.sign(t, func(c *Claims) {
					c.Chain = []Link{{ID: fixedID(7), Subject: testOther}}
					c.Depth = 1
				})
				p := strings.Split(tok, ".")
				p[1] = b64(strings.Replace(unb64(t, p[1]), fixedID(7), fixedID(8), 1))
				return strings.Join(p, ".")
			},
			want: ReasonBadSignature,
		},
		{
			name: "chain link dropped",
			token: func(t *testing.T, f *fixture) string {
				tok := f.sign(t, func(c *Claims) {
					c.Chain = []Link{{ID: fixedID(7), Subject: testOther}}
					c.Depth = 1
				})
				p := strings.Split(tok, ".")
				payload := unb64(t, p[1])
				payload = strings.Replace(payload, `"chain":[{"jti":"`+fixedID(7)+`","sub":"`+testOther+`"}],"depth":1`, `"depth":0`, 1)
				p[1] = b64(payload)
				return strings.Join(p, ".")
			},
			want: ReasonBadSignature,
		},
		{
			name: "depth over the verifier's cap",
			cfg:  func(c *VerifierConfig) { c.MaxDepth = 2 },
			token: func(t *testing.T, f *fixture) string {
				return f.sign(t, func(c *Claims) {
					for i := range 3 {
						c.Chain = append(c.Chain, Link{ID: fixedID(byte(10 + i)), Subject: testOther})
					}
					c.Depth = 3
				})
			},
			want: ReasonBadChain,
		},
		{
			name: "depth disagrees with chain (signed)",
			token: func(t *testing.T, f *fixture) string {
				return signRaw(f.priv, f.header(), claimsJSON(t, func(c *Claims) { c.Depth = 1 }))
			},
			want: ReasonBadChain,
		},
		{
			name: "chain repeats own id (signed)",
			token: func(t *testing.T, f *fixture) string {
				return signRaw(f.priv, f.header(), claimsJSON(t, func(c *Claims) {
					c.Chain = []Link{{ID: c.ID, Subject: testOther}}
					c.Depth = 1
				}))
			},
			want: ReasonBadChain,
		},
		{
			name: "lifetime over max TTL",
			cfg:  func(c *VerifierConfig) { c.MaxTTL = 5 * time.Minute },
			token: func(t *testing.T, f *fixture) string {
				return f.sign(t, nil) // 10 minutes
			},
			want: ReasonBadClaims,
		},
		{
			name: "unknown claim (signed)",
			token: func(t *testing.T, f *fixture) string {
				p := claimsJSON(t, nil)
				return signRaw(f.priv, f.header(), p[:len(p)-1]+`,"admin":true}`)
			},
			want: ReasonBadClaims,
		},
		{
			name: "empty scope (signed)",
			token: func(t *testing.T, f *fixture) string {
				return signRaw(f.priv, f.header(), claimsJSON(t, func(c *Claims) { c.Scope = Scope{} }))
			},
			want: ReasonBadClaims,
		},
		{
			name: "payload not JSON (signed)",
			token: func(t *testing.T, f *fixture) string {
				return signRaw(f.priv, f.header(), "hello")
			},
			want: ReasonBadClaims,
		},
		{
			name: "trailing JSON after claims (signed)",
			token: func(t *testing.T, f *fixture) string {
				return signRaw(f.priv, f.header(), claimsJSON(t, nil)+"{}")
			},
			want: ReasonBadClaims,
		},
		{
			name: "wrong typ",
			token: func(t *testing.T, f *fixture) string {
				return signRaw(f.priv, `{"alg":"EdDSA","kid":"`+f.kid+`","typ":"JWT"}`, claimsJSON(t, nil))
			},
			want: ReasonMalformed,
		},
		{
			name: "crit header",
			token: func(t *testing.T, f *fixture) string {
				return signRaw(f.priv, `{"alg":"EdDSA","kid":"`+f.kid+`","typ":"mandate+jwt","crit":["exp"],"exp":1}`, claimsJSON(t, nil))
			},
			want: ReasonMalformed,
		},
		{
			name: "embedded jwk header",
			token: func(t *testing.T, f *fixture) string {
				return signRaw(otherPriv, `{"alg":"EdDSA","kid":"`+f.kid+`","typ":"mandate+jwt","jwk":{"kty":"OKP","crv":"Ed25519","x":"`+base64.RawURLEncoding.EncodeToString(otherPub)+`"}}`, claimsJSON(t, nil))
			},
			want: ReasonMalformed,
		},
		{
			name: "oversized token",
			token: func(t *testing.T, f *fixture) string {
				return f.sign(t, nil) + strings.Repeat("A", DefaultMaxTokenBytes)
			},
			want: ReasonTooLarge,
		},
		{
			name: "oversized but validly signed",
			cfg:  func(c *VerifierConfig) { c.MaxTokenBytes = 300 },
			token: func(t *testing.T, f *fixture) string {
				return f.sign(t, nil)
			},
			want: ReasonTooLarge,
		},
		{
			name: "two tokens joined with a dot",
			token: func(t *testing.T, f *fixture) string {
				return f.sign(t, nil) + "." + f.sign(t, nil)
			},
			want: ReasonMalformed,
		},
		{
			name: "two tokens concatenated",
			token: func(t *testing.T, f *fixture) string {
				return f.sign(t, nil) + f.sign(t, nil)
			},
			want: ReasonMalformed,
		},
		{
			name: "JSON serialization",
			token: func(t *testing.T, f *fixture) string {
				jws, err := jose.ParseSignedCompact(f.sign(t, nil), []jose.SignatureAlgorithm{jose.EdDSA})
				if err != nil {
					t.Fatal(err)
				}
				return jws.FullSerialize()
			},
			want: ReasonMalformed,
		},
		{
			name:  "trailing garbage",
			token: func(t *testing.T, f *fixture) string { return f.sign(t, nil) + "AAAA" },
			want:  ReasonMalformed,
		},
		{
			name:  "trailing newline",
			token: func(t *testing.T, f *fixture) string { return f.sign(t, nil) + "\n" },
			want:  ReasonMalformed,
		},
		{
			name:  "leading space",
			token: func(t *testing.T, f *fixture) string { return " " + f.sign(t, nil) },
			want:  ReasonMalformed,
		},
		{
			name:  "padded base64",
			token: func(t *testing.T, f *fixture) string { return f.sign(t, nil) + "==" },
			want:  ReasonMalformed,
		},
		{
			name: "non-canonical signature encoding",
			token: func(t *testing.T, f *fixture) string {
				// 64 bytes encode to 86 characters; the last carries 4
				// unused bits. Setting one gives another string for the
				// same signature bytes under lenient decoding.
				tok := f.sign(t, nil)
				last := tok[len(tok)-1]
				idx := strings.IndexByte(b64alphabet, last)
				return tok[:len(tok)-1] + string(b64alphabet[idx|1])
			},
			want: ReasonMalformed,
		},
		{
			name:  "empty",
			token: func(t *testing.T, f *fixture) string { return "" },
			want:  ReasonMalformed,
		},
		{
			name: "two parts",
			token: func(t *testing.T, f *fixture) string {
				return strings.Join(strings.Split(f.sign(t, nil), ".")[:2], ".")
			},
			want: ReasonMalformed,
		},
		{
			name:  "header not JSON",
			token: func(t *testing.T, f *fixture) string { return b64("nope") + "." + b64("{}") + "." + b64("x") },
			want:  ReasonMalformed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, cacheSize := range []int{0, -1} {
				f := newFixture(t, func(c *VerifierConfig) {
					c.CacheSize = cacheSize
					if tt.cfg != nil {
						tt.cfg(c)
					}
				})
				tok := tt.token(t, f)
				// Twice, so a cached verdict is exercised too.
				for range 2 {
					c, err := f.v.Verify(tok)
					if tt.caller != "" {
						if err != nil {
							t.Fatalf("Verify: %v", err)
						}
						err = c.CheckHolder(tt.caller)
					} else if err == nil {
						t.Fatalf("Verify accepted the token: %+v", c)
					}
					wantReason(t, err, tt.want)
				}
			}
		})
	}
}

const b64alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

func TestCheckHolderEmptyCaller(t *testing.T) {
	c := baseClaims(t0)
	wantReason(t, c.CheckHolder(""), ReasonWrongHolder)
	if err := c.CheckHolder(testSubject); err != nil {
		t.Fatal(err)
	}
}

// TestVerifySkewEdges walks the clock across nbf and exp, on a fresh and on
// a cached verifier, checking both sides of every boundary.
func TestVerifySkewEdges(t *testing.T) {
	nbf := t0.Add(time.Minute)
	exp := t0.Add(11 * time.Minute)
	tests := []struct {
		now  time.Time
		want Reason // "" = valid
	}{
		{nbf.Add(-DefaultSkew - time.Nanosecond), ReasonNotYetValid},
		{nbf.Add(-DefaultSkew), ""},
		{nbf, ""},
		{exp.Add(-time.Nanosecond), ""},
		{exp, ""},
		{exp.Add(DefaultSkew - time.Nanosecond), ""},
		{exp.Add(DefaultSkew), ReasonExpired},
		{exp.Add(time.Hour), ReasonExpired},
	}
	for _, cacheSize := range []int{0, -1} {
		f := newFixture(t, func(c *VerifierConfig) { c.CacheSize = cacheSize })
		tok := f.sign(t, func(c *Claims) {
			c.IssuedAt = nbf.Unix()
			c.NotBefore = nbf.Unix()
			c.Expiry = exp.Unix()
		})
		// Seed the cache at a valid instant so later rows hit it.
		f.clock.Set(nbf)
		if _, err := f.v.Verify(tok); err != nil {
			t.Fatal(err)
		}
		for _, tt := range tests {
			f.clock.Set(tt.now)
			_, err := f.v.Verify(tok)
			if tt.want == "" {
				if err != nil {
					t.Errorf("cache %d, at nbf%+v: %v", cacheSize, tt.now.Sub(nbf), err)
				}
				continue
			}
			if ReasonOf(err) != tt.want {
				t.Errorf("cache %d, at nbf%+v: err %v, want %s", cacheSize, tt.now.Sub(nbf), err, tt.want)
			}
		}
	}
}

func TestSetKeysRotation(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.sign(t, nil)
	if _, err := f.v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	newKid, newPub, newPriv := seededKey(50)

	// Add a key: the old one stays, so the token still verifies.
	if err := f.v.SetKeys([]Key{{ID: f.kid, Public: f.pub}, {ID: newKid, Public: newPub}}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.v.Verify(tok); err != nil {
		t.Fatalf("after adding a key: %v", err)
	}
	// Rotate the old key out: the cached verification must not be served.
	if err := f.v.SetKeys([]Key{{ID: newKid, Public: newPub}}); err != nil {
		t.Fatal(err)
	}
	_, err := f.v.Verify(tok)
	wantReason(t, err, ReasonUnknownKey)

	// Tokens from the new key verify.
	s, err := NewSigner(newKid, newPriv, testIssuer)
	if err != nil {
		t.Fatal(err)
	}
	tok2, err := s.Sign(baseClaims(t0))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.v.Verify(tok2); err != nil {
		t.Fatal(err)
	}
	// Re-adding the old kid with a different public key: the old token is
	// checked against the new key and fails.
	if err := f.v.SetKeys([]Key{{ID: f.kid, Public: newPub}}); err != nil {
		t.Fatal(err)
	}
	_, err = f.v.Verify(tok)
	wantReason(t, err, ReasonBadSignature)
}

func TestKeyExpiresWhileCached(t *testing.T) {
	f := newFixture(t, func(c *VerifierConfig) { c.Keys[0].NotAfter = t0.Add(time.Minute) })
	tok := f.sign(t, nil)
	if _, err := f.v.Verify(tok); err != nil {
		t.Fatal(err)
	}
	f.clock.Set(t0.Add(time.Minute))
	_, err := f.v.Verify(tok)
	wantReason(t, err, ReasonUnknownKey)
}

func TestSetKeysRejects(t *testing.T) {
	f := newFixture(t, nil)
	tok := f.sign(t, nil)
	tests := []struct {
		name string
		keys []Key
	}{
		{"empty id", []Key{{Public: f.pub}}},
		{"short key", []Key{{ID: "k", Public: f.pub[:31]}}},
		{"duplicate id", []Key{{ID: "k", Public: f.pub}, {ID: "k", Public: f.pub}}},
		{"inverted window", []Key{{ID: "k", Public: f.pub, NotBefore: t0, NotAfter: t0.Add(-time.Second)}}},
	}
	for _, tt := range tests {
		if err := f.v.SetKeys(tt.keys); err == nil {
			t.Errorf("%s: SetKeys accepted", tt.name)
		}
	}
	// The set in force is unchanged.
	if _, err := f.v.Verify(tok); err != nil {
		t.Fatal(err)
	}
}

func TestNewVerifierRejects(t *testing.T) {
	_, pub, _ := seededKey(1)
	base := VerifierConfig{Issuer: testIssuer, Audience: testAudience, Keys: []Key{{ID: "k", Public: pub}}}
	tests := []struct {
		name string
		mod  func(*VerifierConfig)
	}{
		{"no issuer", func(c *VerifierConfig) { c.Issuer = "" }},
		{"no audience", func(c *VerifierConfig) { c.Audience = "" }},
		{"negative skew", func(c *VerifierConfig) { c.Skew = -time.Second }},
		{"huge skew", func(c *VerifierConfig) { c.Skew = time.Hour }},
		{"negative ttl", func(c *VerifierConfig) { c.MaxTTL = -time.Second }},
		{"depth over cap", func(c *VerifierConfig) { c.MaxDepth = MaxChainDepth + 1 }},
		{"token limit over cap", func(c *VerifierConfig) { c.MaxTokenBytes = 1 << 20 }},
		{"bad key", func(c *VerifierConfig) { c.Keys = []Key{{ID: "k"}} }},
	}
	for _, tt := range tests {
		cfg := base
		cfg.Keys = append([]Key(nil), base.Keys...)
		tt.mod(&cfg)
		if _, err := NewVerifier(cfg); err == nil {
			t.Errorf("%s: NewVerifier accepted", tt.name)
		}
	}
	if _, err := NewVerifier(base); err != nil {
		t.Fatalf("valid config: %v", err)
	}
}

func TestCacheBounded(t *testing.T) {
	f := newFixture(t, func(c *VerifierConfig) { c.CacheSize = 32 })
	for i := range 200 {
		tok := f.sign(t, func(c *Claims) { c.ID = fixedID(byte(i)) })
		if _, err := f.v.Verify(tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.v.cache.len(); n > 32 || n == 0 {
		t.Fatalf("cache holds %d entries, cap 32", n)
	}
}

func TestVerifyConcurrent(t *testing.T) {
	f := newFixture(t, func(c *VerifierConfig) { c.CacheSize = 64 })
	toks := make([]string, 16)
	for i := range toks {
		toks[i] = f.sign(t, func(c *Claims) { c.ID = fixedID(byte(i)) })
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				tok := toks[(g+i)%len(toks)]
				if _, err := f.v.Verify(tok); err != nil {
					errs <- err
					return
				}
				if i%50 == 0 && g == 0 {
					if err := f.v.SetKeys([]Key{{ID: f.kid, Public: f.pub}}); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestReasonOf(t *testing.T) {
	if ReasonOf(nil) != "" || ReasonOf(fmt.Errorf("x")) != "" {
		t.Fatal("ReasonOf of a foreign error must be empty")
	}
	wrapped := fmt.Errorf("outer: %w", errorf(ReasonExpired, "inner"))
	if ReasonOf(wrapped) != ReasonExpired {
		t.Fatal("ReasonOf does not see through wrapping")
	}
}

// TestCacheExactHit: entries are filed by a 64-bit hash, but a hit needs the
// very same token; a colliding different token is a miss.
func TestCacheExactHit(t *testing.T) {
	c := newVerifyCache(16)
	e := &cacheEntry{claims: baseClaims(t0)}
	c.put(42, "token-a", e, 0)
	if got := c.get(42, "token-a"); got != e {
		t.Fatal("exact token missed")
	}
	if got := c.get(42, "token-b"); got != nil {
		t.Fatal("colliding token hit another token's entry")
	}
	if got := c.get(43, "token-a"); got != nil {
		t.Fatal("hit under the wrong hash")
	}
}
