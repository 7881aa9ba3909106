package identity

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseXFCC(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []XFCCElement
	}{
		{
			name: "envoy example",
			in:   `By=spiffe://lyft.com/frontend;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=spiffe://lyft.com/test-team`,
			want: []XFCCElement{{
				By:      "spiffe://lyft.com/frontend",
				Hash:    "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688",
				Subject: "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client",
				URI:     []string{"spiffe://lyft.com/test-team"},
			}},
		},
		{
			name: "two elements",
			in:   `By=http://frontend.lyft.com;Hash=468e;URI=http://testclient.lyft.com,By=http://backend.lyft.com;Hash=9ba6;URI=http://frontend.lyft.com`,
			want: []XFCCElement{
				{By: "http://frontend.lyft.com", Hash: "468e", URI: []string{"http://testclient.lyft.com"}},
				{By: "http://backend.lyft.com", Hash: "9ba6", URI: []string{"http://frontend.lyft.com"}},
			},
		},
		{
			name: "dns list and cert",
			in:   `Hash=ab;Cert="-----BEGIN%20CERTIFICATE-----%0AMIIB";Chain="x";DNS=a.example;DNS=b.example`,
			want: []XFCCElement{{Hash: "ab", Cert: "-----BEGIN%20CERTIFICATE-----%0AMIIB", Chain: "x", DNS: []string{"a.example", "b.example"}}},
		},
		{
			name: "keys case-insensitive",
			in:   `by=spiffe://a/p;HASH=1;uri=spiffe://a/q;dNs=x`,
			want: []XFCCElement{{By: "spiffe://a/p", Hash: "1", URI: []string{"spiffe://a/q"}, DNS: []string{"x"}}},
		},
		{
			name: "quoted specials",
			in:   `Subject="CN=a,O=b;c=d";URI="spiffe://a/p"`,
			want: []XFCCElement{{Subject: "CN=a,O=b;c=d", URI: []string{"spiffe://a/p"}}},
		},
		{
			name: "escaped quote and kept DN escapes",
			in:   `Subject="CN=say \"hi\"\, there\\";URI=spiffe://a/p`,
			want: []XFCCElement{{Subject: `CN=say "hi"\, there\\`, URI: []string{"spiffe://a/p"}}},
		},
		{
			name: "several URIs kept",
			in:   `URI=spiffe://a/p;URI=spiffe://a/q`,
			want: []XFCCElement{{URI: []string{"spiffe://a/p", "spiffe://a/q"}}},
		},
		{
			name: "empty values",
			in:   `Subject="";URI=`,
			want: []XFCCElement{{URI: []string{""}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseXFCC(tt.in)
			if err != nil {
				t.Fatalf("ParseXFCC: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseXFCC(%q)\n got  %+v\n want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseXFCCErrors(t *testing.T) {
	many := strings.Repeat("URI=spiffe://a/p,", MaxXFCCElements) + "URI=spiffe://a/p"
	tests := []struct {
		name string
		in   string
		want Reason
	}{
		{"empty", "", ReasonBadXFCC},
		{"empty element in middle", "URI=a,,URI=b", ReasonBadXFCC},
		{"leading comma", ",URI=a", ReasonBadXFCC},
		{"trailing comma", "URI=a,", ReasonBadXFCC},
		{"empty pair", "URI=a;;Hash=b", ReasonBadXFCC},
		{"trailing semicolon", "URI=a;", ReasonBadXFCC},
		{"key without value", "URI", ReasonBadXFCC},
		{"key then comma", "URI,Hash=a", ReasonBadXFCC},
		{"empty key", "=a", ReasonBadXFCC},
		{"unknown key", "Foo=a", ReasonBadXFCC},
		{"key with space", " URI=a", ReasonBadXFCC},
		{"key with dash", "U-RI=a", ReasonBadXFCC},
		{"repeated By", "By=a;By=b;URI=c", ReasonBadXFCC},
		{"repeated Hash mixed case", "Hash=a;hash=b", ReasonBadXFCC},
		{"repeated Subject", `Subject="a";Subject="b"`, ReasonBadXFCC},
		{"repeated Cert", "Cert=a;Cert=b", ReasonBadXFCC},
		{"repeated Chain", "Chain=a;Chain=b", ReasonBadXFCC},
		{"unterminated quote", `URI="spiffe://a/p`, ReasonBadXFCC},
		{"unterminated after escape", `URI="a\"`, ReasonBadXFCC},
		{"lone trailing backslash", `URI="a\`, ReasonBadXFCC},
		{"text after quote", `URI="a"b`, ReasonBadXFCC},
		{"quote inside unquoted", `URI=a"b"`, ReasonBadXFCC},
		{"equals inside unquoted", `URI=a=b`, ReasonBadXFCC},
		{"backslash inside unquoted", `URI=a\b`, ReasonBadXFCC},
		{"newline", "URI=a\nb", ReasonBadXFCC},
		{"NUL in quotes", "URI=\"a\x00\"", ReasonBadXFCC},
		{"escaped control", "URI=\"a\\\x01\"", ReasonBadXFCC},
		{"DEL", "URI=a\x7f", ReasonBadXFCC},
		{"too many elements", many, ReasonXFCCTooLong},
		{"too long", "Cert=" + strings.Repeat("a", MaxXFCCLength), ReasonXFCCTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseXFCC(tt.in)
			if r := reasonOf(t, err); r != tt.want {
				t.Fatalf("ParseXFCC(%.60q) reason = %q (%v), want %q", tt.in, r, err, tt.want)
			}
			if got != nil {
				t.Fatalf("ParseXFCC returned elements with an error: %+v", got)
			}
		})
	}
}

func TestParseXFCCMaxElements(t *testing.T) {
	in := strings.TrimSuffix(strings.Repeat("URI=spiffe://a/p,", MaxXFCCElements), ",")
	got, err := ParseXFCC(in)
	if err != nil || len(got) != MaxXFCCElements {
		t.Fatalf("ParseXFCC(%d elements) = %d, %v", MaxXFCCElements, len(got), err)
	}
}
