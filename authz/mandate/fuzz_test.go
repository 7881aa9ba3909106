package mandate

import (
	"crypto/ed25519"
	"encoding/base64"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

var updateCorpus = flag.Bool("update-fuzz-corpus", false, "rewrite testdata/fuzz/FuzzVerify from freshly signed tokens")

// corpusTokens returns real tokens, signed with the deterministic fixture
// key at t0, and mutations of them.
func corpusTokens(t testing.TB) map[string]string {
	f := newFixture(t, nil)
	valid := f.sign(t, nil)
	delegated := f.sign(t, func(c *Claims) {
		c.ID = fixedID(3)
		c.Chain = []Link{{ID: fixedID(2), Subject: testOther}}
		c.Depth = 1
	})
	p := strings.Split(valid, ".")
	jws, err := jose.ParseSignedCompact(valid, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"valid":          valid,
		"delegated":      delegated,
		"altered-pay":    p[0] + "." + b64(strings.Replace(unb64(t, p[1]), "GET", "PUT", 1)) + "." + p[2],
		"alg-none":       b64(`{"alg":"none","kid":"`+f.kid+`","typ":"mandate+jwt"}`) + "." + p[1] + ".",
		"alg-hs256":      b64(`{"alg":"HS256","kid":"`+f.kid+`","typ":"mandate+jwt"}`) + "." + p[1] + "." + p[2],
		"json-serial":    jws.FullSerialize(),
		"joined":         valid + "." + delegated,
		"trailing":       valid + "AAAA",
		"unknown-claim":  signRaw(f.priv, f.header(), strings.TrimSuffix(claimsJSON(t, nil), "}")+`,"x":1}`),
		"wrong-aud":      f.sign(t, func(c *Claims) { c.Audience = "other" }),
		"empty-parts":    "..",
		"header-garbage": b64(`{"alg":"EdDSA","kid":`) + "." + p[1] + "." + p[2],
	}
}

func TestWriteFuzzCorpus(t *testing.T) {
	if !*updateCorpus {
		t.Skip("run with -update-fuzz-corpus to regenerate")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzVerify")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, tok := range corpusTokens(t) {
		body := fmt.Sprintf("go test fuzz v1\nstring(%s)\n", strconv.Quote(tok))
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFuzzCorpusCurrent keeps the committed corpus meaningful: its "valid"
// and "delegated" seeds must still verify, so the fuzzer starts from tokens
// that reach the accepting path.
func TestFuzzCorpusCurrent(t *testing.T) {
	f := newFixture(t, nil)
	for _, name := range []string{"valid", "delegated"} {
		raw, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzVerify", name))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
		if len(lines) != 2 || !strings.HasPrefix(lines[1], "string(") {
			t.Fatalf("%s: bad corpus file", name)
		}
		tok, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "string("), ")"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.v.Verify(tok); err != nil {
			t.Fatalf("%s seed no longer verifies: %v", name, err)
		}
	}
}

// FuzzVerify feeds arbitrary strings to Verify. It must never panic, every
// error must carry a Reason, and an accepted token must carry a genuine
// Ed25519 signature by the fixture key over its first two parts (checked
// here independently of go-jose).
func FuzzVerify(f *testing.F) {
	for _, tok := range corpusTokens(f) {
		f.Add(tok)
	}
	f.Add("")
	f.Add("a.b.c")
	f.Add("{}")
	fx := newFixture(f, func(c *VerifierConfig) { c.CacheSize = 64 })
	f.Fuzz(func(t *testing.T, tok string) {
		// A bounded clock drift per input exercises the time checks.
		fx.clock.Set(t0.Add(time.Duration(len(tok)%3-1) * 20 * time.Second))
		c1, err1 := fx.v.Verify(tok)
		c2, err2 := fx.v.Verify(tok) // second call may be a cache hit
		if (err1 == nil) != (err2 == nil) || ReasonOf(err1) != ReasonOf(err2) {
			t.Fatalf("cached verdict differs: %v vs %v", err1, err2)
		}
		if err1 != nil {
			if ReasonOf(err1) == "" {
				t.Fatalf("error without reason: %v", err1)
			}
			return
		}
		if c1 != c2 || c1 == nil {
			t.Fatal("accepted token returned no or different claims")
		}
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			t.Fatalf("accepted a token with %d parts", len(parts))
		}
		sig, err := base64.RawURLEncoding.DecodeString(parts[2])
		if err != nil || !ed25519.Verify(fx.pub, []byte(parts[0]+"."+parts[1]), sig) {
			t.Fatalf("accepted a token not signed by the key: %q", tok)
		}
		if c1.Issuer != testIssuer || c1.Audience != testAudience || c1.Validate() != nil {
			t.Fatalf("accepted bad claims: %+v", c1)
		}
	})
}
