// Package envoyconf decodes, validates and checks the Envoy configuration
// Mandate ships or serves: bootstraps (envoy/*.yaml) and the listener and
// cluster files mandate-cp serves over LDS/CDS (--envoy-dir).
//
// Decoding is strict: YAML or JSON through protojson with unknown fields
// refused and Any resolved only against the typed_config types Mandate's
// configs use (Resolver), so a typo, an unexpected extension or a second
// authorization filter fails to decode. Validation is deep:
// protoc-gen-validate's ValidateAll on the message and on the content of
// every Any below it, recursively (ValidateAll itself does not look inside
// an Any). Then Mandate's wiring rules (CheckBootstrap, CheckListener,
// CheckResources) refuse what Envoy would accept but would make Mandate
// bypassable or fail open.
//
// # Resource files
//
// A resource file (DecodeResources, LoadDir) is one YAML or JSON object:
//
//	bootstrap_clusters: [spire_agent]  # clusters the Envoy bootstrap defines statically
//	listeners: [ ...envoy.config.listener.v3.Listener... ]
//	clusters:  [ ...envoy.config.cluster.v3.Cluster... ]
//
// listeners and clusters are written as in a bootstrap's static_resources.
// bootstrap_clusters names the clusters the resources may reference without
// serving them (the SPIRE agent, the control plane): they must exist in the
// bootstrap of every Envoy that fetches these resources. Only one YAML
// document per file; unknown keys are refused.
package envoyconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	mcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/mcp/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"
)

// MaxFileSize is the largest resource or bootstrap file accepted.
const MaxFileSize = 4 << 20

// Resolver returns the allow-list of typed_config types the configs may
// use: the HTTP connection manager, ext_authz (and its per-route config),
// the MCP filter (and its per-route override, alone or in a route
// FilterConfig), the router, downstream and upstream TLS, and upstream
// HTTP protocol options. Every Any is resolved through it.
func Resolver() (*protoregistry.Types, error) {
	types := new(protoregistry.Types)
	for _, m := range []proto.Message{
		&hcmv3.HttpConnectionManager{},
		&extauthzv3.ExtAuthz{},
		&extauthzv3.ExtAuthzPerRoute{},
		&routerv3.Router{},
		&tlsv3.DownstreamTlsContext{},
		&tlsv3.UpstreamTlsContext{},
		&httpv3.HttpProtocolOptions{},
		&mcpv3.Mcp{},
		&mcpv3.McpOverride{},
		&routev3.FilterConfig{},
	} {
		if err := types.RegisterMessage(m.ProtoReflect().Type()); err != nil {
			return nil, fmt.Errorf("envoyconf: register %T: %w", m, err)
		}
	}
	return types, nil
}

// toJSON converts one YAML (or JSON) document to JSON, refusing a second
// document (which the YAML decoder would silently drop) and oversized input.
func toJSON(data []byte) ([]byte, error) {
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("larger than %d bytes", MaxFileSize)
	}
	if err := singleDocument(data); err != nil {
		return nil, err
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	return js, nil
}

// singleDocument refuses YAML with a document separator after content.
func singleDocument(data []byte) error {
	content := false
	for line := range bytes.Lines(data) {
		s := strings.TrimRight(string(line), " \t\r\n")
		if s == "---" || strings.HasPrefix(s, "--- ") || s == "..." {
			if content {
				return errors.New("more than one YAML document: write one object per file")
			}
			continue
		}
		if t := strings.TrimSpace(s); t != "" && !strings.HasPrefix(t, "#") {
			content = true
		}
	}
	return nil
}

func unmarshal(js []byte, m proto.Message, types *protoregistry.Types) error {
	return protojson.UnmarshalOptions{DiscardUnknown: false, Resolver: types}.Unmarshal(js, m)
}

// DecodeBootstrap decodes an Envoy bootstrap in YAML or JSON strictly and
// validates it deeply. It does not apply the wiring rules: see
// CheckBootstrap.
func DecodeBootstrap(data []byte) (*bootstrapv3.Bootstrap, error) {
	types, err := Resolver()
	if err != nil {
		return nil, err
	}
	js, err := toJSON(data)
	if err != nil {
		return nil, fmt.Errorf("envoyconf: bootstrap: %w", err)
	}
	bs := &bootstrapv3.Bootstrap{}
	if err := unmarshal(js, bs, types); err != nil {
		return nil, fmt.Errorf("envoyconf: decode bootstrap: %w", err)
	}
	if err := Validate(bs); err != nil {
		return nil, fmt.Errorf("envoyconf: bootstrap: %w", err)
	}
	return bs, nil
}

// Resources are listeners and clusters to serve over LDS and CDS.
type Resources struct {
	Listeners []*listenerv3.Listener
	Clusters  []*clusterv3.Cluster
	// BootstrapClusters are clusters the Envoy bootstrap defines
	// statically; resources may reference them.
	BootstrapClusters []string
	// Origin maps "listener/NAME" and "cluster/NAME" to the file the
	// resource came from, for error messages. May be nil.
	Origin map[string]string
}

type resourceFile struct {
	BootstrapClusters []string          `json:"bootstrap_clusters"`
	Listeners         []json.RawMessage `json:"listeners"`
	Clusters          []json.RawMessage `json:"clusters"`
}

// DecodeResources decodes one resource file (see the package comment)
// strictly and validates every listener and cluster deeply. filename only
// names the file in errors and in Origin. It does not apply the wiring
// rules: see CheckResources.
func DecodeResources(filename string, data []byte) (*Resources, error) {
	types, err := Resolver()
	if err != nil {
		return nil, err
	}
	js, err := toJSON(data)
	if err != nil {
		return nil, fmt.Errorf("envoyconf: %s: %w", filename, err)
	}
	var f resourceFile
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("envoyconf: %s: want an object with bootstrap_clusters, listeners and clusters: %w", filename, err)
	}
	r := &Resources{BootstrapClusters: f.BootstrapClusters, Origin: map[string]string{}}
	for i, raw := range f.Listeners {
		l := &listenerv3.Listener{}
		if err := decodeResource(raw, l, types); err != nil {
			return nil, fmt.Errorf("envoyconf: %s: listeners[%d]: %w", filename, i, err)
		}
		if l.GetName() == "" {
			return nil, fmt.Errorf("envoyconf: %s: listeners[%d]: name is required", filename, i)
		}
		r.Listeners = append(r.Listeners, l)
		r.Origin["listener/"+l.GetName()] = filename
	}
	for i, raw := range f.Clusters {
		c := &clusterv3.Cluster{}
		if err := decodeResource(raw, c, types); err != nil {
			return nil, fmt.Errorf("envoyconf: %s: clusters[%d]: %w", filename, i, err)
		}
		if c.GetName() == "" {
			return nil, fmt.Errorf("envoyconf: %s: clusters[%d]: name is required", filename, i)
		}
		r.Clusters = append(r.Clusters, c)
		r.Origin["cluster/"+c.GetName()] = filename
	}
	return r, nil
}

func decodeResource(raw []byte, m proto.Message, types *protoregistry.Types) error {
	if err := unmarshal(raw, m, types); err != nil {
		return fmt.Errorf("decode %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	if name := m.ProtoReflect().Descriptor().Fields().ByName("name"); name != nil {
		if n := m.ProtoReflect().Get(name).String(); n != "" {
			if err := Validate(m); err != nil {
				return fmt.Errorf("%q: %w", n, err)
			}
			return nil
		}
	}
	return Validate(m)
}

type validator interface{ ValidateAll() error }

// Validate runs ValidateAll on m and on the content of every Any below it,
// unpacked with Resolver. A message without validation rules is an error.
func Validate(m proto.Message) error {
	types, err := Resolver()
	if err != nil {
		return err
	}
	return visit(m.ProtoReflect(), types, func(m proto.Message, fromAny bool) error {
		if !fromAny { // covered by the ValidateAll of the root or of an Any's content
			return nil
		}
		v, ok := m.(validator)
		if !ok {
			return fmt.Errorf("%s has no validation", m.ProtoReflect().Descriptor().FullName())
		}
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("validate %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
		return nil
	}, true)
}

// visit calls fn on m and on every message below it, unpacking each Any
// with types and descending into its content. fn's second argument says
// whether the message is the content of an Any (or the root, when
// rootAsAny is set).
func visit(m protoreflect.Message, types *protoregistry.Types, fn func(proto.Message, bool) error, rootAsAny bool) error {
	return visitMsg(m, rootAsAny, types, fn, 0)
}

// maxDepth bounds recursion through nested Any values.
const maxDepth = 100

func visitMsg(m protoreflect.Message, fromAny bool, types *protoregistry.Types, fn func(proto.Message, bool) error, depth int) error {
	if depth > maxDepth {
		return errors.New("messages nested too deeply")
	}
	if err := fn(m.Interface(), fromAny); err != nil {
		return err
	}
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{Resolver: types})
		if err != nil {
			return fmt.Errorf("unpack %s: %w", a.GetTypeUrl(), err)
		}
		return visitMsg(inner.ProtoReflect(), true, types, fn, depth+1)
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				err = visitMsg(mv.Message(), false, types, fn, depth+1)
				return err == nil
			})
		case fd.IsList():
			if fd.Message() == nil {
				return true
			}
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = visitMsg(l.Get(i).Message(), false, types, fn, depth+1)
			}
		case fd.Message() != nil:
			err = visitMsg(v.Message(), false, types, fn, depth+1)
		}
		return err == nil
	})
	return err
}
