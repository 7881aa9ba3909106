package envoy_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
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

// Envoy's well-known names for the pieces Mandate's wiring rules look at.
const (
	extAuthzFilterName = "envoy.filters.http.ext_authz"
	mandateHeader      = "x-mandate"
	maxCheckTimeout    = time.Second
)

// envoyTypes is the allow-list of typed_config types the configs may use.
// protojson resolves every Any through it, so an unexpected extension (a Lua
// filter, a second authz filter, a typo in a type URL) fails to decode.
func envoyTypes() (*protoregistry.Types, error) {
	types := new(protoregistry.Types)
	for _, m := range []proto.Message{
		&hcmv3.HttpConnectionManager{},
		&extauthzv3.ExtAuthz{},
		&extauthzv3.ExtAuthzPerRoute{},
		&routerv3.Router{},
		&tlsv3.DownstreamTlsContext{},
		&tlsv3.UpstreamTlsContext{},
		&httpv3.HttpProtocolOptions{},
	} {
		if err := types.RegisterMessage(m.ProtoReflect().Type()); err != nil {
			return nil, fmt.Errorf("envoy: register %T: %w", m, err)
		}
	}
	return types, nil
}

// decodeBootstrap decodes an Envoy bootstrap in YAML or JSON strictly (unknown
// fields and unknown Any types are errors), runs protoc-gen-validate's
// ValidateAll on it and on the content of every Any below it (ValidateAll does
// not look inside an Any), and returns the bootstrap.
func decodeBootstrap(data []byte, types *protoregistry.Types) (*bootstrapv3.Bootstrap, error) {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("envoy: yaml: %w", err)
	}
	bs := &bootstrapv3.Bootstrap{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false, Resolver: types}).Unmarshal(js, bs); err != nil {
		return nil, fmt.Errorf("envoy: decode bootstrap: %w", err)
	}
	if err := bs.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy: validate bootstrap: %w", err)
	}
	if err := visit(bs.ProtoReflect(), types, validateAny); err != nil {
		return nil, err
	}
	return bs, nil
}

type validator interface{ ValidateAll() error }

// validateAny is a visit callback: it validates each message unpacked from
// an Any.
func validateAny(m proto.Message, fromAny bool) error {
	if !fromAny {
		return nil
	}
	v, ok := m.(validator)
	if !ok {
		return fmt.Errorf("envoy: %s has no validation", m.ProtoReflect().Descriptor().FullName())
	}
	if err := v.ValidateAll(); err != nil {
		return fmt.Errorf("envoy: validate %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	return nil
}

// visit calls fn on m and on every message below it, unpacking each Any with
// the resolver and descending into its content.
func visit(m protoreflect.Message, types *protoregistry.Types, fn func(proto.Message, bool) error) error {
	return visitMsg(m, false, types, fn)
}

func visitMsg(m protoreflect.Message, fromAny bool, types *protoregistry.Types, fn func(proto.Message, bool) error) error {
	if err := fn(m.Interface(), fromAny); err != nil {
		return err
	}
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := anypb.UnmarshalNew(a, proto.UnmarshalOptions{Resolver: types})
		if err != nil {
			return fmt.Errorf("envoy: unpack %s: %w", a.GetTypeUrl(), err)
		}
		return visitMsg(inner.ProtoReflect(), true, types, fn)
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() == nil {
				return true
			}
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				err = visitMsg(mv.Message(), false, types, fn)
				return err == nil
			})
		case fd.IsList():
			if fd.Message() == nil {
				return true
			}
			l := v.List()
			for i := 0; i < l.Len() && err == nil; i++ {
				err = visitMsg(l.Get(i).Message(), false, types, fn)
			}
		case fd.Message() != nil:
			err = visitMsg(v.Message(), false, types, fn)
		}
		return err == nil
	})
	return err
}

// violations collects breaches of Mandate's wiring rules: things Envoy would
// accept that would make Mandate's decisions unsafe or bypassable.
type violations []string

func (v *violations) addf(format string, args ...any) { *v = append(*v, fmt.Sprintf(format, args...)) }

// checkEnvoy decodes and validates one bootstrap, then returns every breach
// of Mandate's wiring rules. The error is for configs Envoy itself rejects.
func checkEnvoy(data []byte, types *protoregistry.Types) (violations, error) {
	bs, err := decodeBootstrap(data, types)
	if err != nil {
		return nil, err
	}
	var v violations
	w := wiring{types: types, v: &v, clusters: map[string]*clusterv3.Cluster{}}
	for _, c := range bs.GetStaticResources().GetClusters() {
		w.clusters[c.GetName()] = c
	}
	w.checkAdmin(bs.GetAdmin())
	for _, l := range bs.GetStaticResources().GetListeners() {
		w.checkListener(l)
	}
	w.checkDynamic(bs)
	if err := w.checkAll(bs); err != nil {
		return nil, err
	}
	for _, c := range bs.GetStaticResources().GetClusters() {
		w.checkCluster(c)
	}
	return v, nil
}

type wiring struct {
	types    *protoregistry.Types
	v        *violations
	clusters map[string]*clusterv3.Cluster
	// grpcClusters are the clusters some envoy_grpc service points at.
	grpcClusters map[string]bool
	// decisionClusters are ext_authz targets; controlClusters are ADS targets.
	// Both must pin their server's SPIFFE ID exactly.
	decisionClusters map[string]bool
	controlClusters  map[string]bool
}

func (w *wiring) unpack(a *anypb.Any, into proto.Message) error {
	return anypb.UnmarshalTo(a, into, proto.UnmarshalOptions{Resolver: w.types})
}

func (w *wiring) isType(a *anypb.Any, m proto.Message) bool {
	return a.MessageName() == m.ProtoReflect().Descriptor().FullName()
}

func (w *wiring) checkAdmin(a *bootstrapv3.Admin) {
	if a.GetAddress() == nil {
		return
	}
	sa := a.GetAddress().GetSocketAddress()
	if sa == nil || !isLoopback(sa.GetAddress()) {
		w.v.addf("admin: must listen on loopback only, got %v", a.GetAddress())
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func (w *wiring) checkListener(l *listenerv3.Listener) {
	chains := slices.Clone(l.GetFilterChains())
	if l.GetDefaultFilterChain() != nil {
		chains = append(chains, l.GetDefaultFilterChain())
	}
	if len(chains) == 0 {
		w.v.addf("listener %s: no filter chain", l.GetName())
	}
	for i, fc := range chains {
		where := fmt.Sprintf("listener %s chain %d", l.GetName(), i)
		w.checkDownstreamTLS(where, fc.GetTransportSocket())
		if len(fc.GetFilters()) != 1 {
			w.v.addf("%s: want exactly one network filter (http_connection_manager), got %d", where, len(fc.GetFilters()))
		}
		for _, f := range fc.GetFilters() {
			hcm := &hcmv3.HttpConnectionManager{}
			if !w.isType(f.GetTypedConfig(), hcm) {
				w.v.addf("%s: network filter %s is not http_connection_manager: it would bypass ext_authz", where, f.GetName())
				continue
			}
			if err := w.unpack(f.GetTypedConfig(), hcm); err != nil {
				w.v.addf("%s: %v", where, err)
				continue
			}
			w.checkHCM(where, hcm)
		}
	}
}

func (w *wiring) checkDownstreamTLS(where string, ts *corev3.TransportSocket) {
	dt := &tlsv3.DownstreamTlsContext{}
	if ts == nil || !w.isType(ts.GetTypedConfig(), dt) {
		w.v.addf("%s: no DownstreamTlsContext: callers without a verified certificate have no identity", where)
		return
	}
	if err := w.unpack(ts.GetTypedConfig(), dt); err != nil {
		w.v.addf("%s: %v", where, err)
		return
	}
	if !dt.GetRequireClientCertificate().GetValue() {
		w.v.addf("%s: require_client_certificate must be true", where)
	}
	w.checkCommonTLS(where, dt.GetCommonTlsContext(), false)
}

// checkCommonTLS requires SDS-delivered key material and a SPIFFE SAN check.
// With exact set, every SAN matcher must be an exact URI SAN (a pinned server).
func (w *wiring) checkCommonTLS(where string, ctc *tlsv3.CommonTlsContext, exact bool) {
	if len(ctc.GetTlsCertificates()) > 0 {
		w.v.addf("%s: static tls_certificates: key material must come from SPIRE over SDS", where)
	}
	if len(ctc.GetTlsCertificateSdsSecretConfigs()) == 0 {
		w.v.addf("%s: no tls_certificate_sds_secret_configs", where)
	}
	cvc := ctc.GetCombinedValidationContext()
	if cvc == nil {
		w.v.addf("%s: want combined_validation_context (SAN matchers plus the SDS trust bundle)", where)
		return
	}
	if name := cvc.GetValidationContextSdsSecretConfig().GetName(); name == "" {
		w.v.addf("%s: no validation_context_sds_secret_config", where)
	}
	sans := cvc.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
	if len(sans) == 0 {
		w.v.addf("%s: no match_typed_subject_alt_names: any certificate from the bundle would be accepted", where)
	}
	for _, san := range sans {
		m := san.GetMatcher()
		switch {
		case san.GetSanType() != tlsv3.SubjectAltNameMatcher_URI:
			w.v.addf("%s: SAN matcher of type %v, want URI (SPIFFE ID)", where, san.GetSanType())
		case exact && !strings.HasPrefix(m.GetExact(), "spiffe://"):
			w.v.addf("%s: the server's SPIFFE ID must be pinned with an exact URI SAN, got %v", where, m)
		case !exact && !strings.HasPrefix(m.GetExact(), "spiffe://") && !strings.HasPrefix(m.GetPrefix(), "spiffe://"):
			w.v.addf("%s: SAN matcher %v is neither an exact nor a prefix spiffe:// match", where, m)
		case m.GetPrefix() != "" && !strings.HasSuffix(m.GetPrefix(), "/"):
			w.v.addf("%s: SAN prefix %q must end with /: spiffe://example.org matches spiffe://example.org.evil", where, m.GetPrefix())
		}
	}
}

func (w *wiring) checkHCM(where string, hcm *hcmv3.HttpConnectionManager) {
	where = fmt.Sprintf("%s hcm %s", where, hcm.GetStatPrefix())
	if hcm.GetForwardClientCertDetails() != hcmv3.HttpConnectionManager_SANITIZE_SET {
		w.v.addf("%s: forward_client_cert_details must be SANITIZE_SET, got %v", where, hcm.GetForwardClientCertDetails())
	}
	if !hcm.GetSetCurrentClientCertDetails().GetUri() {
		w.v.addf("%s: set_current_client_cert_details.uri must be true", where)
	}
	if !hcm.GetNormalizePath().GetValue() {
		w.v.addf("%s: normalize_path must be true", where)
	}
	if !hcm.GetMergeSlashes() {
		w.v.addf("%s: merge_slashes must be true", where)
	}
	if hcm.GetPathWithEscapedSlashesAction() != hcmv3.HttpConnectionManager_REJECT_REQUEST {
		w.v.addf("%s: path_with_escaped_slashes_action must be REJECT_REQUEST, got %v", where, hcm.GetPathWithEscapedSlashesAction())
	}
	if hcm.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction() != corev3.HttpProtocolOptions_REJECT_REQUEST {
		w.v.addf("%s: common_http_protocol_options.headers_with_underscores_action must be REJECT_REQUEST", where)
	}

	filters := hcm.GetHttpFilters()
	authzAt, routerAt := -1, -1
	for i, f := range filters {
		switch {
		case w.isType(f.GetTypedConfig(), &extauthzv3.ExtAuthz{}):
			if authzAt >= 0 {
				w.v.addf("%s: more than one ext_authz filter", where)
			}
			authzAt = i
			if f.GetName() != extAuthzFilterName {
				w.v.addf("%s: ext_authz filter named %q, want %q (per-route settings are keyed by it)", where, f.GetName(), extAuthzFilterName)
			}
			if f.GetDisabled() {
				w.v.addf("%s: ext_authz filter is disabled by default", where)
			}
			ea := &extauthzv3.ExtAuthz{}
			if err := w.unpack(f.GetTypedConfig(), ea); err != nil {
				w.v.addf("%s: %v", where, err)
				continue
			}
			w.checkExtAuthz(where, ea)
		case w.isType(f.GetTypedConfig(), &routerv3.Router{}):
			routerAt = i
		}
	}
	switch {
	case authzAt < 0:
		w.v.addf("%s: no ext_authz filter: Mandate is not consulted", where)
	case routerAt != len(filters)-1:
		w.v.addf("%s: the router filter must be last", where)
	case authzAt > routerAt:
		w.v.addf("%s: ext_authz must come before the router", where)
	}

	rc := hcm.GetRouteConfig()
	if rc == nil {
		w.v.addf("%s: routes must be inline (route_config), so that they are checked here", where)
		return
	}
	w.checkRoutes(where, rc)
}

func (w *wiring) checkExtAuthz(where string, ea *extauthzv3.ExtAuthz) {
	where += " ext_authz"
	gs := ea.GetGrpcService()
	if gs == nil {
		w.v.addf("%s: want grpc_service (Mandate speaks envoy.service.auth.v3 gRPC)", where)
	}
	cluster := gs.GetEnvoyGrpc().GetClusterName()
	if cluster == "" {
		w.v.addf("%s: want envoy_grpc, so that mTLS is the cluster's", where)
	} else {
		if w.decisionClusters == nil {
			w.decisionClusters = map[string]bool{}
		}
		w.decisionClusters[cluster] = true
	}
	switch t := gs.GetTimeout(); {
	case t == nil:
		w.v.addf("%s: grpc_service.timeout must be set", where)
	case t.CheckValid() != nil || t.AsDuration() <= 0 || t.AsDuration() > maxCheckTimeout:
		w.v.addf("%s: grpc_service.timeout %v must be in (0, %v]", where, t.AsDuration(), maxCheckTimeout)
	}
	if ea.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		w.v.addf("%s: transport_api_version must be V3", where)
	}
	if ea.GetFailureModeAllow() {
		w.v.addf("%s: failure_mode_allow must be false: Mandate fails closed", where)
	}
	if !ea.GetIncludePeerCertificate() {
		w.v.addf("%s: include_peer_certificate must be true", where)
	}
	if c := ea.GetStatusOnError().GetCode(); c < 400 {
		w.v.addf("%s: status_on_error must be a 4xx/5xx status, got %v", where, c)
	}
	if ea.GetShadowMode() {
		w.v.addf("%s: shadow_mode would log denials and allow them", where)
	}
	if ea.GetFilterEnabled() != nil || ea.GetFilterEnabledMetadata() != nil {
		w.v.addf("%s: filter_enabled / filter_enabled_metadata would skip checks for some requests", where)
	}
}

func (w *wiring) checkRoutes(where string, rc *routev3.RouteConfiguration) {
	for _, vh := range rc.GetVirtualHosts() {
		vwhere := fmt.Sprintf("%s vhost %s", where, vh.GetName())
		if !slices.Contains(vh.GetRequestHeadersToRemove(), mandateHeader) && !slices.Contains(rc.GetRequestHeadersToRemove(), mandateHeader) {
			w.v.addf("%s: request_headers_to_remove must include %s", vwhere, mandateHeader)
		}
		if _, ok := vh.GetTypedPerFilterConfig()[extAuthzFilterName]; ok {
			w.v.addf("%s: ext_authz settings belong on routes, not the virtual host", vwhere)
		}
		if len(vh.GetRoutes()) == 0 {
			w.v.addf("%s: no routes", vwhere)
		}
		for i, r := range vh.GetRoutes() {
			w.checkRoute(fmt.Sprintf("%s route %d", vwhere, i), r)
		}
	}
}

func (w *wiring) checkRoute(where string, r *routev3.Route) {
	if ra := r.GetRoute(); ra != nil {
		switch {
		case ra.GetCluster() != "":
			if _, ok := w.clusters[ra.GetCluster()]; !ok {
				w.v.addf("%s: unknown cluster %q", where, ra.GetCluster())
			}
		default:
			w.v.addf("%s: want a fixed cluster (cluster_header would let the caller pick the upstream)", where)
		}
	}
	a, ok := r.GetTypedPerFilterConfig()[extAuthzFilterName]
	if !ok {
		w.v.addf("%s: no %s per-route settings: every route must carry context_extensions or be an exempt exact path", where, extAuthzFilterName)
		return
	}
	pr := &extauthzv3.ExtAuthzPerRoute{}
	if !w.isType(a, pr) {
		w.v.addf("%s: per-route ext_authz config of type %s, want ExtAuthzPerRoute", where, a.MessageName())
		return
	}
	if err := w.unpack(a, pr); err != nil {
		w.v.addf("%s: %v", where, err)
		return
	}
	if pr.GetDisabled() {
		if r.GetMatch().GetPath() == "" || len(r.GetMatch().GetHeaders()) > 0 || len(r.GetMatch().GetQueryParameters()) > 0 {
			w.v.addf("%s: ext_authz may be disabled only on an exact path match", where)
		}
		return
	}
	cs := pr.GetCheckSettings()
	if cs.GetServiceOverride() != nil {
		w.v.addf("%s: per-route service override sends checks away from Mandate", where)
	}
	for _, k := range []string{"resource", "sensitivity"} {
		if cs.GetContextExtensions()[k] == "" {
			w.v.addf("%s: context_extensions.%s must be set", where, k)
		}
	}
}

func (w *wiring) checkDynamic(bs *bootstrapv3.Bootstrap) {
	dr := bs.GetDynamicResources()
	if dr == nil {
		return
	}
	if bs.GetNode().GetId() == "" || bs.GetNode().GetCluster() == "" {
		w.v.addf("node: id and cluster must be set for xDS")
	}
	ads := dr.GetAdsConfig()
	if ads == nil {
		w.v.addf("dynamic_resources: want ads_config")
	}
	if t := ads.GetApiType(); t != corev3.ApiConfigSource_GRPC && t != corev3.ApiConfigSource_DELTA_GRPC {
		w.v.addf("dynamic_resources: ads_config.api_type must be GRPC or DELTA_GRPC, got %v", t)
	}
	if ads.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		w.v.addf("dynamic_resources: ads_config.transport_api_version must be V3")
	}
	for _, gs := range ads.GetGrpcServices() {
		if c := gs.GetEnvoyGrpc().GetClusterName(); c != "" {
			if w.controlClusters == nil {
				w.controlClusters = map[string]bool{}
			}
			w.controlClusters[c] = true
		} else {
			w.v.addf("dynamic_resources: ads_config must use envoy_grpc")
		}
	}
	for name, cs := range map[string]*corev3.ConfigSource{"lds_config": dr.GetLdsConfig(), "cds_config": dr.GetCdsConfig()} {
		if cs.GetAds() == nil {
			w.v.addf("dynamic_resources: %s must come over ADS", name)
		}
		if cs.GetResourceApiVersion() != corev3.ApiVersion_V3 {
			w.v.addf("dynamic_resources: %s.resource_api_version must be V3", name)
		}
	}
}

// checkAll applies the rules that hold wherever a message appears.
func (w *wiring) checkAll(bs *bootstrapv3.Bootstrap) error {
	w.grpcClusters = map[string]bool{}
	return visit(bs.ProtoReflect(), w.types, func(m proto.Message, _ bool) error {
		switch m := m.(type) {
		case *corev3.GrpcService:
			c := m.GetEnvoyGrpc().GetClusterName()
			if c == "" {
				w.v.addf("grpc_service %v: want envoy_grpc to a static cluster", m)
				break
			}
			if _, ok := w.clusters[c]; !ok {
				w.v.addf("grpc_service: unknown cluster %q", c)
			}
			w.grpcClusters[c] = true
		case *tlsv3.TlsCertificate:
			w.v.addf("static TlsCertificate: key material must come from SPIRE over SDS")
		case *tlsv3.SdsSecretConfig:
			if m.GetSdsConfig().GetApiConfigSource() == nil {
				w.v.addf("sds secret %q: want an api_config_source (the SPIRE agent), not a file", m.GetName())
			}
		}
		return nil
	})
}

func (w *wiring) checkCluster(c *clusterv3.Cluster) {
	where := "cluster " + c.GetName()
	if w.grpcClusters[c.GetName()] {
		a, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
		hpo := &httpv3.HttpProtocolOptions{}
		if !ok || w.unpack(a, hpo) != nil || hpo.GetExplicitHttpConfig().GetHttp2ProtocolOptions() == nil {
			w.v.addf("%s: carries gRPC, so it needs explicit HTTP/2 protocol options", where)
		}
	}
	remote := false
	for _, le := range c.GetLoadAssignment().GetEndpoints() {
		for _, lb := range le.GetLbEndpoints() {
			addr := lb.GetEndpoint().GetAddress()
			if addr.GetPipe() != nil {
				continue
			}
			if !isLoopback(addr.GetSocketAddress().GetAddress()) {
				remote = true
			}
		}
	}
	pinned := w.decisionClusters[c.GetName()] || w.controlClusters[c.GetName()]
	if !remote && !pinned {
		return
	}
	ut := &tlsv3.UpstreamTlsContext{}
	ts := c.GetTransportSocket()
	if ts == nil || !w.isType(ts.GetTypedConfig(), ut) {
		w.v.addf("%s: leaves the host, so it needs an UpstreamTlsContext (mTLS with the SVID)", where)
		return
	}
	if err := w.unpack(ts.GetTypedConfig(), ut); err != nil {
		w.v.addf("%s: %v", where, err)
		return
	}
	w.checkCommonTLS(where, ut.GetCommonTlsContext(), pinned)
}
