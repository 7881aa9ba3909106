package main

import (
	"io"
	"strings"
	"testing"
)

func TestFlagValidation(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"both modes", []string{"--plaintext", "--policy-dir", "x", "--xds-server", "y"}, "at most one of --policy-dir"},
		{"mTLS without allowed callers", []string{"--policy-dir", "x"}, "--allowed-caller is required"},
		{"zero svid timeout", []string{"--plaintext", "--svid-timeout", "0"}, "--svid-timeout"},
		{"extra argument", []string{"--plaintext", "x"}, "unexpected arguments"},
		{"too many streams", []string{"--plaintext", "--max-concurrent-streams", "4294967297"}, "--max-concurrent-streams"},
		{"bad stale mode", []string{"--plaintext", "--policy-dir", "x", "--stale-mode", "some"}, "--stale-mode"},
		{"keys with xds", []string{"--plaintext", "--xds-server", "127.0.0.1:1", "--mandate-keys", "k.json"}, "--mandate-keys is for standalone"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseFlags(tt.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("parseFlags(%q) = %v, want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestHardeningFlags(t *testing.T) {
	o, err := parseFlags([]string{"--plaintext", "--trusted-proxy", "spiffe://example.org/gateway", "--require-xfcc-by",
		"--require-peer-certificate", "--max-header-bytes", "4096", "--max-request-bytes", "65536"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c := o.cfg; !c.RequireXFCCBy || !c.RequirePeerCertificate || c.MaxHeaderBytes != 4096 || c.MaxRequestBytes != 65536 {
		t.Fatalf("options %+v", o)
	}
	if _, err := parseFlags([]string{"--plaintext", "--require-xfcc-by"}, io.Discard); err == nil {
		t.Fatal("--require-xfcc-by without a --trusted-proxy accepted")
	}
	if _, err := parseFlags([]string{"--plaintext", "--max-header-bytes", "0"}, io.Discard); err == nil {
		t.Fatal("--max-header-bytes 0 accepted")
	}
}
