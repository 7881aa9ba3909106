// Package envoy_test checks every Envoy bootstrap and Istio/Kubernetes
// manifest under envoy/ against the real API types (go-control-plane and
// istio.io/api, decoded strictly and validated) and against Mandate's own
// wiring rules: the things Envoy or Istio would accept that would make
// Mandate bypassable or fail open.
package envoy_test

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// expectedFiles must exist; the walk checks these and anything else added.
var expectedFiles = []string{
	"sidecar.yaml",
	"mcp-sidecar.yaml",
	"front-proxy.yaml",
	"xds-bootstrap.yaml",
	"cp-resources/tickets-api.yaml",
	"istio/mesh-config.yaml",
	"istio/authorization-policy.yaml",
	"istio/mandate-authz.yaml",
	"istio/mandate-cp.yaml",
	"istio/spire-identities.yaml",
	"istio/ha/etcd.yaml",
	"istio/ha/mandate-cp.yaml",
	"istio/ha/mandate-authz.yaml",
}

// configFiles walks the envoy/ directory and returns every config file in it.
// A .yml file is an error, so that nothing escapes the check by its extension.
func configFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		switch filepath.Ext(path) {
		case ".yaml":
			files = append(files, filepath.ToSlash(path))
		case ".yml", ".json":
			t.Errorf("%s: configs must be .yaml files so that this test checks them", path)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk: %v", err)
	}
	for _, f := range expectedFiles {
		if !slices.Contains(files, f) {
			t.Errorf("expected config %s is missing", f)
		}
	}
	return files
}

// The kinds of config file under envoy/.
const (
	kindBootstrap = iota // an Envoy bootstrap
	kindResources        // listeners and clusters mandate-cp serves (envoyconf.DecodeResources)
	kindManifest         // Istio and Kubernetes manifests
)

func fileKind(path string) int {
	switch {
	case strings.HasPrefix(path, "istio/"):
		return kindManifest
	case strings.HasPrefix(path, "cp-resources/"):
		return kindResources
	}
	return kindBootstrap
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestConfigs checks every YAML file under envoy/: the Istio manifests
// as two sets, one mandate-cp on bbolt (istio/) and the highly available
// control plane on etcd (istio/ha/ over istio/).
func TestConfigs(t *testing.T) {
	for _, path := range configFiles(t) {
		t.Run(path, func(t *testing.T) {
			data := readFile(t, path)
			var (
				v   violations
				err error
			)
			switch fileKind(path) {
			case kindBootstrap:
				v, err = checkEnvoy(data)
			case kindResources:
				v, err = checkResources(path, data, readFile(t, "xds-bootstrap.yaml"))
			case kindManifest:
				return // decoded and checked below, in its sets
			}
			if err != nil {
				t.Fatalf("Envoy would reject %s: %v", path, err)
			}
			for _, s := range v {
				t.Errorf("wiring rule broken: %s", s)
			}
		})
	}
	base, ha, err := manifestSets(t, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, mf := range map[string]*manifests{"istio/cross-checks": base, "istio/ha/cross-checks": ha} {
		t.Run(name, func(t *testing.T) {
			for _, s := range mf.check() {
				t.Errorf("wiring rule broken: %s", s)
			}
		})
	}
}

// TestEnvoyConfigsRejected proves the checks can fail: each case mutates a
// good config and must be refused, by Envoy's own validation (wantErr) or by
// Mandate's wiring rules (wantViolation).
func TestEnvoyConfigsRejected(t *testing.T) {
	const (
		extAuthz   = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
		perRoute   = "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
		hcm        = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
		downstream = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
		upstream   = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
	)
	tests := []struct {
		name          string
		file          string
		mutate        func(t *testing.T, doc map[string]any)
		wantErr       string
		wantViolation string
	}{
		{
			name: "unknown field in ext_authz",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, extAuthz, func(m map[string]any) { m["fail_closed"] = true })
			},
			wantErr: "fail_closed",
		},
		// MCP wiring (mcp-sidecar.yaml).
		{
			name: "MCP route sends part of the body",
			file: "mcp-sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onMCPRoute(t, doc, func(cs map[string]any) { field(t, cs, "with_request_body")["allow_partial_message"] = true })
			},
			wantViolation: "allow_partial_message must be false",
		},
		{
			name: "MCP route without the body",
			file: "mcp-sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onMCPRoute(t, doc, func(cs map[string]any) { delete(cs, "with_request_body") })
			},
			wantViolation: "needs check_settings.with_request_body",
		},
		{
			name: "MCP body as a string",
			file: "mcp-sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onMCPRoute(t, doc, func(cs map[string]any) { delete(field(t, cs, "with_request_body"), "pack_as_bytes") })
			},
			wantViolation: "pack_as_bytes",
		},
		{
			name: "MCP body over the limit",
			file: "mcp-sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onMCPRoute(t, doc, func(cs map[string]any) { field(t, cs, "with_request_body")["max_request_bytes"] = 1 << 24 })
			},
			wantViolation: "max_request_bytes",
		},
		{
			name: "body sent on every route",
			file: "mcp-sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, extAuthz, func(m map[string]any) {
					m["with_request_body"] = map[string]any{"max_request_bytes": 1024}
				})
			},
			wantViolation: "with_request_body belongs on the MCP routes",
		},
		{
			name: "body sent on a route not labelled MCP",
			file: "mcp-sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, perRoute, func(m map[string]any) {
					if cs, ok := m["check_settings"].(map[string]any); ok && field(t, cs, "context_extensions")["protocol"] == nil {
						cs["with_request_body"] = map[string]any{"max_request_bytes": 1024, "pack_as_bytes": true}
					}
				})
			},
			wantViolation: "not labelled protocol: mcp",
		},
		{
			name: "MCP filter metadata not forwarded",
			file: "mcp-sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, extAuthz, func(m map[string]any) { delete(m, "metadata_context_namespaces") })
			},
			wantViolation: "metadata_context_namespaces",
		},
		{
			name: "MCP filter after ext_authz",
			file: "mcp-sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, hcm, func(m map[string]any) {
					fs := m["http_filters"].([]any)
					fs[0], fs[1] = fs[1], fs[0]
				})
			},
			wantViolation: "MCP filter must come before ext_authz",
		},
		{
			name: "MCP filter not enabled on the MCP route",
			file: "mcp-sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, "envoy.config.route.v3.FilterConfig", func(m map[string]any) { m["disabled"] = true })
			},
			wantViolation: "disabled on an MCP route",
		},
		{
			name: "MCP filter passing non-MCP traffic on the MCP route",
			file: "mcp-sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, "envoy.extensions.filters.http.mcp.v3.McpOverride", func(m map[string]any) { m["traffic_mode"] = "PASS_THROUGH" })
			},
			wantViolation: "REJECT_NO_MCP",
		},
		{
			name: "unknown field in the MCP filter",
			file: "mcp-sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, "envoy.extensions.filters.http.mcp.v3.Mcp", func(m map[string]any) { m["reject_batches"] = true })
			},
			wantErr: "reject_batches",
		},
		{
			name:    "unknown top-level field",
			file:    "xds-bootstrap.yaml",
			mutate:  func(_ *testing.T, doc map[string]any) { doc["dynamic_resource"] = map[string]any{} },
			wantErr: "dynamic_resource",
		},
		{
			name: "typed_config type outside the allow-list",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, "envoy.extensions.filters.http.router.v3.Router", func(m map[string]any) {
					m["@type"] = "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua"
				})
			},
			wantErr: "lua",
		},
		{
			name: "invalid message inside an Any (empty stat_prefix)",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, hcm, func(m map[string]any) { m["stat_prefix"] = "" })
			},
			wantErr: "StatPrefix",
		},
		{
			name: "invalid enum inside an Any",
			file: "front-proxy.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, extAuthz, func(m map[string]any) { m["transport_api_version"] = "V4" })
			},
			wantErr: "V4",
		},
		{
			name: "invalid message inside a map of Any (per-route override missing)",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, perRoute, func(m map[string]any) {
					delete(m, "disabled")
				})
			},
			wantErr: "Override",
		},
		{
			name: "negative check timeout",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, extAuthz, func(m map[string]any) { field(t, m, "grpc_service")["timeout"] = "-0.25s" })
			},
			wantViolation: "timeout",
		},
		{
			name: "check timeout past the budget",
			file: "front-proxy.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, extAuthz, func(m map[string]any) { field(t, m, "grpc_service")["timeout"] = "5s" })
			},
			wantViolation: "timeout",
		},
		{
			name: "failure_mode_allow true",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, extAuthz, func(m map[string]any) { m["failure_mode_allow"] = true })
			},
			wantViolation: "failure_mode_allow",
		},
		{
			name: "include_peer_certificate missing",
			file: "front-proxy.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, extAuthz, func(m map[string]any) { delete(m, "include_peer_certificate") })
			},
			wantViolation: "include_peer_certificate",
		},
		{
			name: "shadow mode",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, extAuthz, func(m map[string]any) { m["shadow_mode"] = true })
			},
			wantViolation: "shadow_mode",
		},
		{
			name: "ext_authz disabled on a prefix route",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, perRoute, func(m map[string]any) {
					if _, ok := m["check_settings"]; ok {
						delete(m, "check_settings")
						m["disabled"] = true
					}
				})
			},
			wantViolation: "exact path",
		},
		{
			name: "route without context_extensions",
			file: "front-proxy.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, perRoute, func(m map[string]any) {
					if cs, ok := m["check_settings"].(map[string]any); ok {
						delete(cs["context_extensions"].(map[string]any), "resource")
					}
				})
			},
			wantViolation: "context_extensions.resource",
		},
		{
			name: "x-mandate reaches the upstream",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, hcm, func(m map[string]any) {
					for _, vh := range field(t, m, "route_config")["virtual_hosts"].([]any) {
						delete(vh.(map[string]any), "request_headers_to_remove")
					}
				})
			},
			wantViolation: "x-mandate",
		},
		{
			name: "client certificate details forwarded from the client",
			file: "front-proxy.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, hcm, func(m map[string]any) { m["forward_client_cert_details"] = "APPEND_FORWARD" })
			},
			wantViolation: "forward_client_cert_details",
		},
		{
			name: "escaped slashes passed through",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, hcm, func(m map[string]any) { m["path_with_escaped_slashes_action"] = "KEEP_UNCHANGED" })
			},
			wantViolation: "path_with_escaped_slashes_action",
		},
		{
			name: "router before ext_authz",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, hcm, func(m map[string]any) { slices.Reverse(m["http_filters"].([]any)) })
			},
			wantViolation: "router filter must be last",
		},
		{
			name: "client certificate optional",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, downstream, func(m map[string]any) { m["require_client_certificate"] = false })
			},
			wantViolation: "require_client_certificate",
		},
		{
			name: "authorizer SPIFFE ID not pinned",
			file: "sidecar.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, upstream, func(m map[string]any) {
					cvc := field(t, field(t, m, "common_tls_context"), "combined_validation_context")
					field(t, cvc, "default_validation_context")["match_typed_subject_alt_names"] = []any{
						map[string]any{"san_type": "URI", "matcher": map[string]any{"prefix": "spiffe://example.org/"}},
					}
				})
			},
			wantViolation: "pinned",
		},
		{
			name: "admin reachable from the network",
			file: "front-proxy.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				field(t, field(t, field(t, doc, "admin"), "address"), "socket_address")["address"] = "0.0.0.0"
			},
			wantViolation: "admin",
		},
		{
			name: "listeners from a file instead of ADS",
			file: "xds-bootstrap.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				field(t, doc, "dynamic_resources")["lds_config"] = map[string]any{
					"path_config_source": map[string]any{"path": "/etc/envoy/lds.yaml"}, "resource_api_version": "V3",
				}
			},
			wantViolation: "lds_config must come over ADS",
		},
		{
			name: "control plane without TLS",
			file: "xds-bootstrap.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				for _, c := range field(t, doc, "static_resources")["clusters"].([]any) {
					if c.(map[string]any)["name"] == "mandate_cp" {
						delete(c.(map[string]any), "transport_socket")
					}
				}
			},
			wantViolation: "cluster mandate_cp",
		},
		{
			name: "served listener fails open",
			file: "cp-resources/tickets-api.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, extAuthz, func(m map[string]any) { m["failure_mode_allow"] = true })
			},
			wantViolation: "failure_mode_allow",
		},
		{
			name: "served listener without SANITIZE_SET",
			file: "cp-resources/tickets-api.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				onTyped(t, doc, hcm, func(m map[string]any) { delete(m, "forward_client_cert_details") })
			},
			wantViolation: "cp-resources/tickets-api.yaml: listener inbound_mtls chain 0 hcm inbound_tickets: forward_client_cert_details",
		},
		{
			name: "unknown field in a served cluster",
			file: "cp-resources/tickets-api.yaml",
			mutate: func(t *testing.T, doc map[string]any) {
				doc["clusters"].([]any)[0].(map[string]any)["connect_timeut"] = "1s"
			},
			wantErr: "clusters[0]",
		},
		{
			name: "authorizer cluster not served",
			file: "cp-resources/tickets-api.yaml",
			mutate: func(_ *testing.T, doc map[string]any) {
				doc["clusters"] = doc["clusters"].([]any)[:1]
			},
			wantViolation: `ext_authz cluster "mandate_authz" must be served`,
		},
		{
			name: "bootstrap cluster the bootstrap does not define",
			file: "cp-resources/tickets-api.yaml",
			mutate: func(_ *testing.T, doc map[string]any) {
				doc["bootstrap_clusters"] = []any{"spire_agent", "sds_elsewhere"}
			},
			wantViolation: "sds_elsewhere",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := yamlDoc(t, readFile(t, tt.file))
			tt.mutate(t, doc)
			data, err := json.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			var v violations
			if fileKind(tt.file) == kindResources {
				v, err = checkResources(tt.file, data, readFile(t, "xds-bootstrap.yaml"))
			} else {
				v, err = checkEnvoy(data)
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected decode error: %v", err)
			}
			if !slices.ContainsFunc(v, func(s string) bool { return strings.Contains(s, tt.wantViolation) }) {
				t.Fatalf("violations %q, want one mentioning %q", v, tt.wantViolation)
			}
		})
	}
}

// onTyped calls fn on every JSON object in doc whose "@type" names typeName,
// and fails the test when there is none (a mutation that matches nothing
// would make its case pass for the wrong reason).
func onTyped(t *testing.T, doc any, typeName string, fn func(map[string]any)) {
	t.Helper()
	n := 0
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["@type"] == "type.googleapis.com/"+typeName {
				n++
				fn(v)
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(doc)
	if n == 0 {
		t.Fatalf("no %s in the config", typeName)
	}
}

// onMCPRoute calls fn on the check_settings of every route labelled
// protocol: mcp, failing the test when there is none.
func onMCPRoute(t *testing.T, doc any, fn func(checkSettings map[string]any)) {
	t.Helper()
	n := 0
	onTyped(t, doc, "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute", func(m map[string]any) {
		if cs, ok := m["check_settings"].(map[string]any); ok && field(t, cs, "context_extensions")["protocol"] == "mcp" {
			n++
			fn(cs)
		}
	})
	if n == 0 {
		t.Fatal("no MCP route")
	}
}

// field returns the JSON object under key, failing the test if it is absent.
func field(t *testing.T, m map[string]any, key string) map[string]any {
	t.Helper()
	v, ok := m[key].(map[string]any)
	if !ok {
		t.Fatalf("no object %q in %v", key, m)
	}
	return v
}
