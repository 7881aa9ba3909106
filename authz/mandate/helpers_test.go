package mandate

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a settable Clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

const (
	testIssuer   = "spiffe://example.org/mandate/cp"
	testAudience = "mandate"
	testSubject  = "spiffe://example.org/agent/support"
	testOther    = "spiffe://example.org/agent/billing"
)

// t0 is the fixed "now" of every test.
var t0 = time.Unix(1_750_000_000, 0)

// seededKey returns a deterministic Ed25519 key, so signed test tokens (and
// the fuzz corpus) are reproducible.
func seededKey(b byte) (string, ed25519.PublicKey, ed25519.PrivateKey) {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = b + byte(i)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	kid, err := KeyID(pub)
	if err != nil {
		panic(err)
	}
	return kid, pub, priv
}

type fixture struct {
	kid    string
	pub    ed25519.PublicKey
	priv   ed25519.PrivateKey
	signer *Signer
	clock  *fakeClock
	v      *Verifier
}

func newFixture(t testing.TB, mod func(*VerifierConfig)) *fixture {
	t.Helper()
	kid, pub, priv := seededKey(1)
	s, err := NewSigner(kid, priv, testIssuer)
	if err != nil {
		t.Fatal(err)
	}
	clk := &fakeClock{t: t0}
	cfg := VerifierConfig{
		Issuer:   testIssuer,
		Audience: testAudience,
		Keys:     []Key{{ID: kid, Public: pub}},
		Clock:    clk,
	}
	if mod != nil {
		mod(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{kid: kid, pub: pub, priv: priv, signer: s, clock: clk, v: v}
}

// fixedID makes jti values deterministic for the corpus.
func fixedID(b byte) string {
	var raw [idBytes]byte
	for i := range raw {
		raw[i] = b ^ byte(i*7)
	}
	return base64.RawURLEncoding.EncodeToString(raw[:])
}

func baseClaims(now time.Time) *Claims {
	return &Claims{
		Subject:   testSubject,
		Audience:  testAudience,
		ID:        fixedID(1),
		IssuedAt:  now.Unix(),
		NotBefore: now.Unix(),
		Expiry:    now.Add(10 * time.Minute).Unix(),
		Task:      "task-42",
		Intent:    "support.reply",
		Scope: Scope{
			Destinations: []string{"spiffe://example.org/svc/tickets"},
			Methods:      []string{"GET", "POST"},
			Paths:        []string{"/tickets/**"},
			GRPC:         []string{"tickets.v1.Tickets/Get"},
		},
	}
}

func (f *fixture) sign(t testing.TB, mod func(*Claims)) string {
	t.Helper()
	c := baseClaims(t0)
	if mod != nil {
		mod(c)
	}
	tok, err := f.signer.Sign(c)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return tok
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func unb64(t testing.TB, s string) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// signRaw signs arbitrary header and payload bytes with priv: a token whose
// signature is genuine but whose content the test chooses.
func signRaw(priv ed25519.PrivateKey, header, payload string) string {
	in := b64(header) + "." + b64(payload)
	return in + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(priv, []byte(in)))
}

func (f *fixture) header() string {
	return `{"alg":"EdDSA","kid":"` + f.kid + `","typ":"mandate+jwt"}`
}

// payloadOf returns the JSON payload of a token.
func payloadOf(t testing.TB, tok string) string {
	t.Helper()
	return unb64(t, strings.Split(tok, ".")[1])
}

// claimsJSON marshals claims as the signer would, with iss filled.
func claimsJSON(t testing.TB, mod func(*Claims)) string {
	t.Helper()
	c := baseClaims(t0)
	c.Issuer = testIssuer
	if mod != nil {
		mod(c)
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func wantReason(t testing.TB, err error, want Reason) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want %s", want)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not *Error, want %s", err, err, want)
	}
	if e.Reason != want {
		t.Fatalf("reason %s (%v), want %s", e.Reason, err, want)
	}
}
