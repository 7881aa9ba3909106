package attrs

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/maphash"
	"net/url"
	"strings"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ReasonBadCertificate: source.certificate is present but does not parse,
// does not carry exactly one URI SAN (X509-SVID), or its SAN is not
// source.principal; or it is absent where one is required.
const ReasonBadCertificate = "bad_certificate"

// MaxCertificateBytes bounds source.certificate (URL-encoded PEM).
const MaxCertificateBytes = 16 << 10

// certCache remembers the verdict on recent peer certificates, so the hit
// path pays a hash and a compare, not a PEM and X.509 parse. It is direct
// mapped: a fixed array of slots, each holding one certificate (the exact
// text, so a hit is exact) and the URI SAN it carries ("" when it did not
// pass). Eviction is by collision.
type certCache struct {
	seed  maphash.Seed
	slots [certSlots]atomic.Pointer[certEntry]
}

const certSlots = 1024

// certTailBytes of a certificate choose its slot.
const certTailBytes = 128

type certEntry struct {
	cert string // the URL-encoded PEM as Envoy sent it
	san  string
	err  error
}

func newCertCache() *certCache { return &certCache{seed: maphash.MakeSeed()} }

// check returns nil when cert (source.certificate) is a valid X509-SVID
// leaf whose one URI SAN is principal.
func (c *certCache) check(cert, principal string) error {
	// The slot is chosen by the certificate's length and tail (its
	// signature, in base64): hashing the whole PEM would cost more than
	// the exact compare below, which decides a hit.
	tail := cert[max(0, len(cert)-certTailBytes):]
	slot := &c.slots[(maphash.String(c.seed, tail)+uint64(len(cert)))%certSlots]
	e := slot.Load()
	if e == nil || e.cert != cert {
		san, err := svidSAN(cert)
		e = &certEntry{cert: strings.Clone(cert), san: san, err: err}
		slot.Store(e)
	}
	if e.err != nil {
		return e.err
	}
	if e.san != principal {
		return wrap(ReasonBadCertificate, errors.New("peer certificate's URI SAN is not source.principal"))
	}
	return nil
}

// svidSAN parses a URL-encoded PEM leaf certificate and returns its one
// SPIFFE URI SAN.
func svidSAN(cert string) (string, error) {
	if len(cert) > MaxCertificateBytes {
		return "", wrap(ReasonBadCertificate, fmt.Errorf("certificate is %d bytes, max %d", len(cert), MaxCertificateBytes))
	}
	raw, err := url.PathUnescape(cert)
	if err != nil {
		return "", wrap(ReasonBadCertificate, fmt.Errorf("certificate is not URL-encoded: %w", err))
	}
	block, rest := pem.Decode([]byte(raw))
	if block == nil || block.Type != "CERTIFICATE" {
		return "", wrap(ReasonBadCertificate, errors.New("certificate is not a PEM CERTIFICATE block"))
	}
	if strings.TrimSpace(string(rest)) != "" {
		return "", wrap(ReasonBadCertificate, errors.New("data after the leaf certificate"))
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", wrap(ReasonBadCertificate, fmt.Errorf("certificate: %w", err))
	}
	id, err := x509svid.IDFromCert(leaf) // exactly one URI SAN, a SPIFFE ID
	if err != nil {
		return "", wrap(ReasonBadCertificate, fmt.Errorf("certificate: %w", err))
	}
	return id.String(), nil
}
