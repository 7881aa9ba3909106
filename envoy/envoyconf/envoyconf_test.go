package envoyconf

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const sampleFile = "../cp-resources/tickets-api.yaml"

func readSample(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(sampleFile)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sampleDoc(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal(readSample(t), &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

// at walks doc along path (map keys and list indexes) and returns the
// object there, failing the test when the path does not exist.
func at(t *testing.T, doc any, path ...any) map[string]any {
	t.Helper()
	cur := doc
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := cur.(map[string]any)
			if !ok {
				t.Fatalf("path %v: %v is not an object", path, k)
			}
			cur = m[k]
		case int:
			l, ok := cur.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("path %v: no index %d", path, k)
			}
			cur = l[k]
		}
	}
	m, ok := cur.(map[string]any)
	if !ok {
		t.Fatalf("path %v: not an object", path)
	}
	return m
}

// Paths into the sample.
var (
	chain    = []any{"listeners", 0, "filter_chains", 0}
	hcm      = append(append([]any{}, chain...), "filters", 0, "typed_config")
	extAuthz = append(append([]any{}, hcm...), "http_filters", 0, "typed_config")
	vhost    = append(append([]any{}, hcm...), "route_config", "virtual_hosts", 0)
)

func TestSampleIsGood(t *testing.T) {
	r, err := DecodeResources("tickets-api.yaml", readSample(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Listeners) != 1 || len(r.Clusters) != 2 || r.Origin["listener/inbound_mtls"] != "tickets-api.yaml" {
		t.Fatalf("decoded %d listeners, %d clusters, origin %v", len(r.Listeners), len(r.Clusters), r.Origin)
	}
	if err := CheckResources(r); err != nil {
		t.Fatal(err)
	}
	if err := CheckListener(r.Listeners[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadDir("../cp-resources"); err != nil {
		t.Fatal(err)
	}
}

func TestBootstrapsAreGood(t *testing.T) {
	for _, f := range []string{"../sidecar.yaml", "../front-proxy.yaml", "../xds-bootstrap.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		bs, err := DecodeBootstrap(b)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := CheckBootstrap(bs); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

// TestUnsafeResourcesRefused mutates the sample; each mutation must be
// refused with an error naming the file, the resource and the field.
func TestUnsafeResourcesRefused(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(t *testing.T, doc map[string]any)
		rule   bool     // a wiring rule (RuleError), else a decode/validation error
		want   []string // substrings of the error
	}{
		{"unknown top-level key", func(_ *testing.T, d map[string]any) { d["routes"] = []any{} }, false,
			[]string{"f.yaml", "routes"}},
		{"unknown field in a listener", func(t *testing.T, d map[string]any) { at(t, d, "listeners", 0)["per_connection_buffer"] = 1 }, false,
			[]string{"f.yaml", "listeners[0]", "per_connection_buffer"}},
		{"typed_config outside the allow-list", func(t *testing.T, d map[string]any) {
			at(t, d, extAuthz...)["@type"] = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
		}, false, []string{"f.yaml", "listeners[0]", "lua"}},
		{"invalid message inside an Any", func(t *testing.T, d map[string]any) { at(t, d, hcm...)["stat_prefix"] = "" }, false,
			[]string{"f.yaml", "listeners[0]", `"inbound_mtls"`, "StatPrefix"}},
		{"invalid cluster", func(t *testing.T, d map[string]any) { at(t, d, "clusters", 0)["connect_timeout"] = "-1s" }, false,
			[]string{"f.yaml", "clusters[0]", `"upstream_service"`, "ConnectTimeout"}},
		{"listener without a name", func(t *testing.T, d map[string]any) { delete(at(t, d, "listeners", 0), "name") }, false,
			[]string{"f.yaml", "listeners[0]", "name"}},
		{"fail open", func(t *testing.T, d map[string]any) { at(t, d, extAuthz...)["failure_mode_allow"] = true }, true,
			[]string{"f.yaml: listener inbound_mtls chain 0", "failure_mode_allow"}},
		{"no peer certificate", func(t *testing.T, d map[string]any) { delete(at(t, d, extAuthz...), "include_peer_certificate") }, true,
			[]string{"f.yaml: listener inbound_mtls", "include_peer_certificate"}},
		{"client cert details appended", func(t *testing.T, d map[string]any) {
			at(t, d, hcm...)["forward_client_cert_details"] = "APPEND_FORWARD"
		}, true,
			[]string{"f.yaml: listener inbound_mtls", "forward_client_cert_details must be SANITIZE_SET"}},
		{"no path normalization", func(t *testing.T, d map[string]any) { delete(at(t, d, hcm...), "normalize_path") }, true,
			[]string{"f.yaml: listener inbound_mtls", "normalize_path"}},
		{"plaintext listener", func(t *testing.T, d map[string]any) { delete(at(t, d, chain...), "transport_socket") }, true,
			[]string{"f.yaml: listener inbound_mtls chain 0", "DownstreamTlsContext"}},
		{"SAN prefix without a slash", func(t *testing.T, d map[string]any) {
			m := at(t, d, append(append([]any{}, chain...), "transport_socket", "typed_config", "common_tls_context",
				"combined_validation_context", "default_validation_context", "match_typed_subject_alt_names", 0, "matcher")...)
			m["prefix"] = "spiffe://example.org"
		}, true, []string{"f.yaml: listener inbound_mtls chain 0", "must end with /"}},
		{"x-mandate reaches the upstream", func(t *testing.T, d map[string]any) { delete(at(t, d, vhost...), "request_headers_to_remove") }, true,
			[]string{"f.yaml: listener inbound_mtls chain 0 hcm inbound_tickets vhost tickets", "x-mandate"}},
		{"route without context_extensions", func(t *testing.T, d map[string]any) {
			delete(at(t, d, append(append([]any{}, vhost...), "routes", 1)...), "typed_per_filter_config")
		}, true, []string{"vhost tickets route 1", "context_extensions"}},
		{"route to an unknown cluster", func(t *testing.T, d map[string]any) {
			at(t, d, append(append([]any{}, vhost...), "routes", 1, "route")...)["cluster"] = "elsewhere"
		}, true, []string{"route 1", `unknown cluster "elsewhere"`}},
		{"authorizer not pinned", func(t *testing.T, d map[string]any) {
			m := at(t, d, "clusters", 1, "transport_socket", "typed_config", "common_tls_context", "combined_validation_context",
				"default_validation_context", "match_typed_subject_alt_names", 0, "matcher")
			delete(m, "exact")
			m["prefix"] = "spiffe://example.org/"
		}, true, []string{"f.yaml: cluster mandate_authz", "pinned"}},
		{"authorizer in plaintext", func(t *testing.T, d map[string]any) { delete(at(t, d, "clusters", 1), "transport_socket") }, true,
			[]string{"f.yaml: cluster mandate_authz", "UpstreamTlsContext"}},
		{"authorizer over HTTP/1", func(t *testing.T, d map[string]any) {
			delete(at(t, d, "clusters", 1), "typed_extension_protocol_options")
		}, true,
			[]string{"f.yaml: cluster mandate_authz", "HTTP/2"}},
		{"SDS cluster not declared", func(_ *testing.T, d map[string]any) { delete(d, "bootstrap_clusters") }, true,
			[]string{"f.yaml: listener inbound_mtls", `unknown cluster "spire_agent"`}},
		{"EDS cluster", func(t *testing.T, d map[string]any) {
			c := at(t, d, "clusters", 0)
			c["type"] = "EDS"
			c["eds_cluster_config"] = map[string]any{"eds_config": map[string]any{"ads": map[string]any{}}}
		}, true, []string{"f.yaml: cluster upstream_service", "EDS"}},
		{"served cluster shadows a bootstrap one", func(_ *testing.T, d map[string]any) {
			d["bootstrap_clusters"] = []any{"spire_agent", "upstream_service"}
		}, true, []string{"cluster upstream_service", "bootstrap_clusters"}},
		{"duplicate listener", func(t *testing.T, d map[string]any) {
			d["listeners"] = append(d["listeners"].([]any), d["listeners"].([]any)[0])
		}, true, []string{"listener inbound_mtls", "defined twice"}},
		{"no listeners", func(_ *testing.T, d map[string]any) { delete(d, "listeners") }, true,
			[]string{"no listeners"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := sampleDoc(t)
			tt.mutate(t, doc)
			data, err := json.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			r, err := DecodeResources("f.yaml", data)
			if err == nil {
				if !tt.rule {
					t.Fatalf("decoded without error, want a decode error")
				}
				err = CheckResources(r)
				var re *RuleError
				if !errors.As(err, &re) {
					t.Fatalf("CheckResources = %v, want a *RuleError", err)
				}
			} else if tt.rule {
				t.Fatalf("decode error %v, want a wiring rule violation", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestDecodeResourcesInput(t *testing.T) {
	tests := []struct {
		name, data, want string
	}{
		{"two documents", "listeners: []\n---\nclusters: []\n", "more than one YAML document"},
		{"not an object", "- a\n- b\n", "want an object"},
		{"bad yaml", "listeners: [\n", "yaml"},
		{"too large", strings.Repeat("#", MaxFileSize+1), "larger than"},
		{"listener not an object", "listeners: [3]\n", "listeners[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeResources("x.yaml", []byte(tt.data))
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "x.yaml") {
				t.Fatalf("err = %v, want one naming x.yaml and mentioning %q", err, tt.want)
			}
		})
	}
	// A leading document marker is one document.
	if _, err := DecodeResources("x.yaml", []byte("---\n# c\nbootstrap_clusters: [a]\n")); err != nil {
		t.Fatalf("leading ---: %v", err)
	}
}

func TestLoadDir(t *testing.T) {
	good := readSample(t)
	write := func(t *testing.T, dir, name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("split across files, hidden files skipped", func(t *testing.T) {
		dir := t.TempDir()
		doc := sampleDoc(t)
		clusters := doc["clusters"]
		delete(doc, "clusters")
		a, _ := json.Marshal(doc)
		b, _ := json.Marshal(map[string]any{"clusters": clusters})
		write(t, dir, "listeners.json", a)
		write(t, dir, "clusters.yaml", b)
		write(t, dir, ".swp", []byte("garbage"))
		write(t, dir, "clusters.yaml~", []byte("garbage"))
		r, err := LoadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Listeners) != 1 || len(r.Clusters) != 2 || r.Origin["cluster/mandate_authz"] != "clusters.yaml" {
			t.Fatalf("loaded %d listeners, %d clusters, origin %v", len(r.Listeners), len(r.Clusters), r.Origin)
		}
	})
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T, dir string)
		want  string
	}{
		{"empty", func(*testing.T, string) {}, "no resource files"},
		{"same resource in two files", func(t *testing.T, dir string) {
			write(t, dir, "a.yaml", good)
			write(t, dir, "b.yaml", good)
		}, "also defined in a.yaml"},
		{"other file", func(t *testing.T, dir string) {
			write(t, dir, "a.yaml", good)
			write(t, dir, "notes.txt", []byte("x"))
		}, "notes.txt: not a .yaml"},
		{"subdirectory", func(t *testing.T, dir string) {
			write(t, dir, "a.yaml", good)
			if err := os.Mkdir(filepath.Join(dir, "more"), 0o700); err != nil {
				t.Fatal(err)
			}
		}, "subdirectories"},
		{"unsafe file", func(t *testing.T, dir string) {
			write(t, dir, "a.yaml", []byte(strings.Replace(string(good), "failure_mode_allow: false", "failure_mode_allow: true", 1)))
		}, "a.yaml: listener inbound_mtls"},
		{"missing", func(t *testing.T, dir string) {
			if err := os.Remove(dir); err != nil {
				t.Fatal(err)
			}
		}, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.setup(t, dir)
			_, err := LoadDir(dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}

// FuzzDecodeResources: hostile resource files give an error, never a
// panic or a hang, and whatever decodes can be checked.
func FuzzDecodeResources(f *testing.F) {
	f.Add(readSampleF(f))
	f.Add([]byte("listeners: [{name: a}]\n"))
	f.Add([]byte(`{"clusters":[{"name":"c","connect_timeout":"1s"}],"bootstrap_clusters":["x"]}`))
	f.Add([]byte("listeners:\n- name: l\n  filter_chains:\n  - filters:\n    - name: x\n      typed_config: {\"@type\": type.googleapis.com/google.protobuf.Struct}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeResources("fuzz.yaml", data)
		if err != nil {
			return
		}
		_ = CheckResources(r)
		for _, l := range r.Listeners {
			_ = CheckListener(l)
		}
	})
}

func readSampleF(f *testing.F) []byte {
	b, err := os.ReadFile(sampleFile)
	if err != nil {
		f.Fatal(err)
	}
	return b
}

// FuzzDecodeBootstrap: the same for bootstraps.
func FuzzDecodeBootstrap(f *testing.F) {
	for _, p := range []string{"../xds-bootstrap.yaml", "../sidecar.yaml"} {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("node: {id: a}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		bs, err := DecodeBootstrap(data)
		if err != nil {
			return
		}
		_ = CheckBootstrap(bs)
	})
}
