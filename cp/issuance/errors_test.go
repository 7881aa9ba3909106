package issuance

import (
	"strings"
	"testing"
)

// TestParseErrorsArePlaced: a mistake in an issuance policy is reported
// as FILE:LINE:COL with the offending line, whatever the decoder reports.
func TestParseErrorsArePlaced(t *testing.T) {
	head := "apiVersion: mandate.dev/v1\nkind: IssuancePolicy\nrules:\n  - name: x\n"
	for _, tt := range []struct{ name, doc, want string }{
		{"unknown field", head + "    calers: [\"a\"]\n", "f.yaml:5:5: unknown field \"calers\"\n  4 |   - name: x\n  5 |     calers: [\"a\"]\n    |     ^"},
		{"wrong type", head + "    maxTTL: [1]\n", "f.yaml:5:5: cannot unmarshal array into Go struct field Rule.rules.maxTTL of type string"},
		{"syntax", "apiVersion: mandate.dev/v1\nkind: IssuancePolicy\nrules: [\n", "f.yaml:3:"},
		{"duplicate key", head + "    name: y\n", "f.yaml:5:"},
	} {
		_, err := Parse("f.yaml", []byte(tt.doc))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v\nwant it to contain %q", tt.name, err, tt.want)
		}
	}
}
