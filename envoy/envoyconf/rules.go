package envoyconf

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
	mcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/mcp/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/anypb"
)

// Envoy's well-known names for the pieces Mandate's wiring rules look at.
const (
	ExtAuthzFilterName = "envoy.filters.http.ext_authz"
	// MCPFilterName is Envoy's MCP filter; its metadata namespace is the
	// same name. Routes labelled protocol: mcp need it (see checkMCPRoute).
	MCPFilterName = "envoy.filters.http.mcp"
	// MaxMCPBody is the largest body an MCP route may send to ext_authz:
	// mandate-authz's default --mcp-max-body.
	MaxMCPBody      = 1 << 20
	MandateHeader   = "x-mandate"
	MaxCheckTimeout = time.Second
)

// RuleError lists every breach of Mandate's wiring rules found in a
// config: things Envoy would accept that would make Mandate's decisions
// unsafe or bypassable. Each violation names where it is (file, listener,
// chain, virtual host, route, cluster) and the field.
type RuleError struct {
	Violations []string
}

func (e *RuleError) Error() string {
	return "envoyconf: wiring rules broken: " + strings.Join(e.Violations, "; ")
}

func (v violations) err() error {
	if len(v) == 0 {
		return nil
	}
	return &RuleError{Violations: slices.Clone(v)}
}

// CheckBootstrap applies Mandate's wiring rules to a decoded bootstrap:
// its admin address, static listeners and clusters, and dynamic_resources
// (LDS and CDS over ADS only). It returns a *RuleError listing every
// violation, or an error when a typed_config cannot be unpacked.
func CheckBootstrap(bs *bootstrapv3.Bootstrap) error {
	w, err := newWiring()
	if err != nil {
		return err
	}
	for _, c := range bs.GetStaticResources().GetClusters() {
		w.clusters[c.GetName()] = c
	}
	w.checkAdmin(bs.GetAdmin())
	for _, l := range bs.GetStaticResources().GetListeners() {
		w.checkListener("", l)
	}
	w.checkDynamic(bs)
	if err := w.checkAll("", bs); err != nil {
		return fmt.Errorf("envoyconf: %w", err)
	}
	for _, c := range bs.GetStaticResources().GetClusters() {
		w.checkCluster("", c)
	}
	return w.v.err()
}

// CheckListener applies the listener rules alone: mTLS with client
// certificates and SPIFFE SAN matchers, one HTTP connection manager with
// SANITIZE_SET and path normalization, ext_authz fail-closed with the peer
// certificate before the router, x-mandate removed, per-route
// context_extensions. Whether the clusters it names exist and are pinned
// is CheckResources' (or CheckBootstrap's) business.
func CheckListener(l *listenerv3.Listener) error {
	w, err := newWiring()
	if err != nil {
		return err
	}
	w.clusters = nil
	w.checkListener("", l)
	return w.v.err()
}

// CheckResources applies the wiring rules to a set of listeners and
// clusters served together over LDS/CDS: every listener as CheckListener,
// every cluster a route or gRPC service names must be served here or be
// one of BootstrapClusters, the ext_authz cluster must be served here
// (so that its SPIFFE ID pin is checked), gRPC clusters speak HTTP/2,
// clusters leaving the host use mTLS, no EDS (mandate-cp serves no
// endpoints), names are unique, and there is at least one listener.
func CheckResources(r *Resources) error {
	w, err := newWiring()
	if err != nil {
		return err
	}
	w.origin = r.Origin
	if len(r.Listeners) == 0 {
		w.v.addf("no listeners: Envoy would drop every listener it has")
	}
	static := map[string]bool{}
	for _, name := range r.BootstrapClusters {
		if name == "" {
			w.v.addf("bootstrap_clusters: empty name")
		}
		static[name] = true
		w.clusters[name] = nil
	}
	for _, c := range r.Clusters {
		where := w.at("cluster", c.GetName())
		if static[c.GetName()] {
			w.v.addf("%s: also listed in bootstrap_clusters: Envoy refuses a CDS cluster named like a static one", where)
		}
		if _, dup := w.clusters[c.GetName()]; dup && !static[c.GetName()] {
			w.v.addf("%s: defined twice", where)
		}
		w.clusters[c.GetName()] = c
	}
	seen := map[string]bool{}
	for _, l := range r.Listeners {
		if seen[l.GetName()] {
			w.v.addf("%s: defined twice", w.at("listener", l.GetName()))
		}
		seen[l.GetName()] = true
		w.checkListener(w.origin["listener/"+l.GetName()], l)
	}
	for c := range w.decisionClusters {
		if w.clusters[c] == nil {
			w.v.addf("ext_authz cluster %q must be served with these resources, so that its SPIFFE ID pin is checked", c)
		}
	}
	for _, l := range r.Listeners {
		if err := w.checkAll(w.at("listener", l.GetName()), l); err != nil {
			return fmt.Errorf("envoyconf: %w", err)
		}
	}
	for _, c := range r.Clusters {
		if err := w.checkAll(w.at("cluster", c.GetName()), c); err != nil {
			return fmt.Errorf("envoyconf: %w", err)
		}
	}
	for _, c := range r.Clusters {
		if c.GetType() == clusterv3.Cluster_EDS {
			w.v.addf("%s: type EDS: mandate-cp serves no endpoints, use load_assignment", w.at("cluster", c.GetName()))
		}
		w.checkCluster(w.origin["cluster/"+c.GetName()], c)
	}
	return w.v.err()
}

func newWiring() (*wiring, error) {
	types, err := Resolver()
	if err != nil {
		return nil, err
	}
	return &wiring{types: types, v: new(violations), clusters: map[string]*clusterv3.Cluster{},
		decisionClusters: map[string]bool{}, controlClusters: map[string]bool{}, grpcClusters: map[string]bool{}}, nil
}

// at names a resource in messages, with its file when known.
func (w *wiring) at(kind, name string) string {
	return prefix(w.origin[kind+"/"+name]) + kind + " " + name
}

func prefix(file string) string {
	if file == "" {
		return ""
	}
	return file + ": "
}

// violations collects breaches of Mandate's wiring rules.
type violations []string

func (v *violations) addf(format string, args ...any) { *v = append(*v, fmt.Sprintf(format, args...)) }

type wiring struct {
	types *protoregistry.Types
	v     *violations
	// clusters are the clusters routes and gRPC services may name (nil
	// value: defined in the bootstrap, not here). A nil map skips the
	// existence checks.
	clusters map[string]*clusterv3.Cluster
	// origin maps "listener/NAME" and "cluster/NAME" to a file name.
	origin map[string]string
	// grpcClusters are the clusters some envoy_grpc service points at.
	grpcClusters map[string]bool
	// decisionClusters are ext_authz targets; controlClusters are ADS targets.
	// Both must pin their server's SPIFFE ID exactly.
	decisionClusters map[string]bool
	controlClusters  map[string]bool
	// hcm is what the routes of the connection manager being checked
	// depend on.
	hcm hcmState
}

// hcmState is what checkHCM learned from the filter chain.
type hcmState struct {
	// mcpFilter: an MCP filter runs before ext_authz; mcpDisabled: it is
	// disabled unless a route enables it.
	mcpFilter, mcpDisabled bool
	// namespaces are ext_authz's metadata_context_namespaces.
	namespaces []string
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

func (w *wiring) checkListener(file string, l *listenerv3.Listener) {
	chains := slices.Clone(l.GetFilterChains())
	if l.GetDefaultFilterChain() != nil {
		chains = append(chains, l.GetDefaultFilterChain())
	}
	if len(chains) == 0 {
		w.v.addf("%slistener %s: no filter chain", prefix(file), l.GetName())
	}
	for i, fc := range chains {
		where := fmt.Sprintf("%slistener %s chain %d", prefix(file), l.GetName(), i)
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
	authzAt, routerAt, mcpAt := -1, -1, -1
	w.hcm = hcmState{}
	for i, f := range filters {
		switch {
		case w.isType(f.GetTypedConfig(), &mcpv3.Mcp{}):
			mcpAt = i
			w.hcm.mcpDisabled = f.GetDisabled()
			if f.GetName() != MCPFilterName {
				w.v.addf("%s: MCP filter named %q, want %q (per-route settings and its metadata namespace are keyed by it)", where, f.GetName(), MCPFilterName)
			}
		case w.isType(f.GetTypedConfig(), &extauthzv3.ExtAuthz{}):
			if authzAt >= 0 {
				w.v.addf("%s: more than one ext_authz filter", where)
			}
			authzAt = i
			if f.GetName() != ExtAuthzFilterName {
				w.v.addf("%s: ext_authz filter named %q, want %q (per-route settings are keyed by it)", where, f.GetName(), ExtAuthzFilterName)
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
			w.hcm.namespaces = ea.GetMetadataContextNamespaces()
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
	switch {
	case mcpAt < 0:
	case authzAt >= 0 && mcpAt > authzAt:
		w.v.addf("%s: the MCP filter must come before ext_authz (its metadata is a decision input)", where)
	default:
		w.hcm.mcpFilter = true
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
		w.decisionClusters[cluster] = true
	}
	switch t := gs.GetTimeout(); {
	case t == nil:
		w.v.addf("%s: grpc_service.timeout must be set", where)
	case t.CheckValid() != nil || t.AsDuration() <= 0 || t.AsDuration() > MaxCheckTimeout:
		w.v.addf("%s: grpc_service.timeout %v must be in (0, %v]", where, t.AsDuration(), MaxCheckTimeout)
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
	if ea.GetWithRequestBody() != nil {
		w.v.addf("%s: with_request_body belongs on the MCP routes' check_settings, not on every request", where)
	}
}

func (w *wiring) checkRoutes(where string, rc *routev3.RouteConfiguration) {
	for _, vh := range rc.GetVirtualHosts() {
		vwhere := fmt.Sprintf("%s vhost %s", where, vh.GetName())
		if !slices.Contains(vh.GetRequestHeadersToRemove(), MandateHeader) && !slices.Contains(rc.GetRequestHeadersToRemove(), MandateHeader) {
			w.v.addf("%s: request_headers_to_remove must include %s", vwhere, MandateHeader)
		}
		if _, ok := vh.GetTypedPerFilterConfig()[ExtAuthzFilterName]; ok {
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
			if _, ok := w.clusters[ra.GetCluster()]; !ok && w.clusters != nil {
				w.v.addf("%s: unknown cluster %q", where, ra.GetCluster())
			}
		default:
			w.v.addf("%s: want a fixed cluster (cluster_header would let the caller pick the upstream)", where)
		}
	}
	a, ok := r.GetTypedPerFilterConfig()[ExtAuthzFilterName]
	if !ok {
		w.v.addf("%s: no %s per-route settings: every route must carry context_extensions or be an exempt exact path", where, ExtAuthzFilterName)
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
	if cs.GetContextExtensions()["protocol"] == "mcp" {
		w.checkMCPRoute(where, r, cs)
	} else if cs.GetWithRequestBody() != nil {
		w.v.addf("%s: with_request_body on a route not labelled protocol: mcp (bodies go to Mandate on MCP routes only)", where)
	}
}

// checkMCPRoute holds a route labelled protocol: mcp to what Mandate
// needs to decide its tool calls: the whole body (with_request_body,
// allow_partial_message false, as bytes, bounded), the MCP filter before
// ext_authz and enabled on the route, refusing what is not JSON-RPC, and
// its metadata forwarded (metadata_context_namespaces).
func (w *wiring) checkMCPRoute(where string, r *routev3.Route, cs *extauthzv3.CheckSettings) {
	wb := cs.GetWithRequestBody()
	switch {
	case wb == nil:
		w.v.addf("%s: an MCP route needs check_settings.with_request_body (Mandate reads the JSON-RPC body)", where)
	default:
		if wb.GetAllowPartialMessage() {
			w.v.addf("%s: with_request_body.allow_partial_message must be false: a partial body is refused, never decided", where)
		}
		if n := wb.GetMaxRequestBytes(); n == 0 || n > MaxMCPBody {
			w.v.addf("%s: with_request_body.max_request_bytes %d must be in (0, %d]", where, n, MaxMCPBody)
		}
		if !wb.GetPackAsBytes() {
			w.v.addf("%s: with_request_body.pack_as_bytes must be true: the body reaches Mandate as sent", where)
		}
	}
	if !w.hcm.mcpFilter {
		w.v.addf("%s: an MCP route needs the %s filter before ext_authz", where, MCPFilterName)
	}
	if !slices.Contains(w.hcm.namespaces, MCPFilterName) {
		w.v.addf("%s: ext_authz metadata_context_namespaces must include %s", where, MCPFilterName)
	}
	a, ok := r.GetTypedPerFilterConfig()[MCPFilterName]
	if !ok {
		if w.hcm.mcpDisabled {
			w.v.addf("%s: the %s filter is disabled by default and not enabled on this MCP route", where, MCPFilterName)
		}
		return
	}
	if w.isType(a, &routev3.FilterConfig{}) {
		fc := &routev3.FilterConfig{}
		if err := w.unpack(a, fc); err != nil {
			w.v.addf("%s: %v", where, err)
			return
		}
		if fc.GetDisabled() {
			w.v.addf("%s: the %s filter is disabled on an MCP route", where, MCPFilterName)
		}
		a = fc.GetConfig()
	}
	o := &mcpv3.McpOverride{}
	if a == nil || !w.isType(a, o) {
		if w.hcm.mcpDisabled {
			w.v.addf("%s: the %s filter must be enabled on the MCP route with an McpOverride", where, MCPFilterName)
		}
		return
	}
	if err := w.unpack(a, o); err != nil {
		w.v.addf("%s: %v", where, err)
		return
	}
	if o.GetTrafficMode() != mcpv3.Mcp_REJECT_NO_MCP {
		w.v.addf("%s: the MCP filter's traffic_mode on an MCP route must be REJECT_NO_MCP", where)
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

// checkAll applies the rules that hold wherever a message appears below m.
func (w *wiring) checkAll(where string, m proto.Message) error {
	if where != "" {
		where += ": "
	}
	return visit(m.ProtoReflect(), w.types, func(m proto.Message, _ bool) error {
		switch m := m.(type) {
		case *corev3.GrpcService:
			c := m.GetEnvoyGrpc().GetClusterName()
			if c == "" {
				w.v.addf("%sgrpc_service %v: want envoy_grpc to a known cluster", where, m)
				break
			}
			if _, ok := w.clusters[c]; !ok {
				w.v.addf("%sgrpc_service: unknown cluster %q", where, c)
			}
			w.grpcClusters[c] = true
		case *tlsv3.TlsCertificate:
			w.v.addf("%sstatic TlsCertificate: key material must come from SPIRE over SDS", where)
		case *tlsv3.SdsSecretConfig:
			if m.GetSdsConfig().GetApiConfigSource() == nil {
				w.v.addf("%ssds secret %q: want an api_config_source (the SPIRE agent), not a file", where, m.GetName())
			}
		}
		return nil
	}, false)
}

func (w *wiring) checkCluster(file string, c *clusterv3.Cluster) {
	where := prefix(file) + "cluster " + c.GetName()
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
