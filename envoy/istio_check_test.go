package envoy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	networkingv1 "istio.io/api/networking/v1"
	securityv1 "istio.io/api/security/v1"
	"sigs.k8s.io/yaml"

	"github.com/mandate-dev/mandate/envoy/envoyconf"
)

// The identities and names the manifests must agree on.
const (
	trustDomain      = "example.org"
	authzSPIFFEID    = "spiffe://example.org/mandate/authz"
	cpSPIFFEID       = "spiffe://example.org/mandate/cp"
	providerName     = "mandate"
	authzApp         = "mandate-authz"
	cpApp            = "mandate-cp"
	etcdApp          = "etcd"
	spiffeCSIDriver  = "csi.spiffe.io"
	spiffeSocketEnv  = "SPIFFE_ENDPOINT_SOCKET"
	trustDomainToken = "{{ .TrustDomain }}"
)

// knownFlags are the flags each binary accepts (the lead makes the binaries
// accept exactly these). A typo in a manifest would crash-loop the pod.
var knownFlags = map[string][]string{
	authzApp: {"--listen", "--metrics-addr", "--xds-server", "--trust-domain", "--allowed-caller", "--policy-dir", "--require-peer-certificate"},
	cpApp: {"--xds-listen", "--admin-listen", "--data-dir", "--trust-domain", "--allowed-caller", "--metrics-addr",
		"--etcd-endpoint", "--etcd-cacert", "--etcd-cert", "--etcd-key", "--kek-file", "--instance-id",
		"--etcd-lease-ttl", "--etcd-grace"},
	etcdApp: {"--name", "--data-dir", "--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls",
		"--initial-advertise-peer-urls", "--initial-cluster", "--initial-cluster-state", "--initial-cluster-token",
		"--client-cert-auth", "--trusted-ca-file", "--cert-file", "--key-file", "--peer-client-cert-auth",
		"--peer-trusted-ca-file", "--peer-cert-file", "--peer-key-file", "--listen-metrics-urls"},
}

// Minimal local Kubernetes types: only the fields these manifests use,
// decoded with unknown fields disallowed so that a typo is an error
// (k8s.io/api is not in the module graph and is not worth adding for this).
type objectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type typeMeta struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
}

type labelSelector struct {
	MatchLabels map[string]string `json:"matchLabels"`
}

type namespace struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
}

type serviceAccount struct {
	typeMeta
	Metadata                     objectMeta `json:"metadata"`
	AutomountServiceAccountToken *bool      `json:"automountServiceAccountToken,omitempty"`
}

type pvc struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		AccessModes []string `json:"accessModes"`
		Resources   struct {
			Requests map[string]string `json:"requests"`
		} `json:"resources"`
		StorageClassName *string `json:"storageClassName,omitempty"`
	} `json:"spec"`
}

type pdb struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		MinAvailable   *int32        `json:"minAvailable,omitempty"`
		MaxUnavailable *int32        `json:"maxUnavailable,omitempty"`
		Selector       labelSelector `json:"selector"`
	} `json:"spec"`
}

type service struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		ClusterIP                string            `json:"clusterIP,omitempty"`
		PublishNotReadyAddresses bool              `json:"publishNotReadyAddresses,omitempty"`
		Selector                 map[string]string `json:"selector"`
		Ports                    []servicePort     `json:"ports"`
	} `json:"spec"`
}

type servicePort struct {
	Name        string          `json:"name"`
	Port        int32           `json:"port"`
	TargetPort  json.RawMessage `json:"targetPort"`
	AppProtocol string          `json:"appProtocol,omitempty"`
}

type probe struct {
	HTTPGet struct {
		Path string          `json:"path"`
		Port json.RawMessage `json:"port"`
	} `json:"httpGet"`
	PeriodSeconds    int `json:"periodSeconds,omitempty"`
	FailureThreshold int `json:"failureThreshold,omitempty"`
}

type container struct {
	Name    string   `json:"name"`
	Image   string   `json:"image"`
	Command []string `json:"command,omitempty"`
	Args    []string `json:"args"`
	Env     []struct {
		Name      string `json:"name"`
		Value     string `json:"value,omitempty"`
		ValueFrom *struct {
			FieldRef struct {
				FieldPath string `json:"fieldPath"`
			} `json:"fieldRef"`
		} `json:"valueFrom,omitempty"`
	} `json:"env"`
	Ports []struct {
		Name          string `json:"name"`
		ContainerPort int32  `json:"containerPort"`
	} `json:"ports"`
	ReadinessProbe *probe `json:"readinessProbe"`
	LivenessProbe  *probe `json:"livenessProbe"`
	Resources      struct {
		Requests map[string]string `json:"requests"`
		Limits   map[string]string `json:"limits"`
	} `json:"resources"`
	SecurityContext *struct {
		AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
		ReadOnlyRootFilesystem   *bool `json:"readOnlyRootFilesystem"`
		Capabilities             struct {
			Drop []string `json:"drop"`
		} `json:"capabilities"`
	} `json:"securityContext"`
	VolumeMounts []struct {
		Name      string `json:"name"`
		MountPath string `json:"mountPath"`
		ReadOnly  bool   `json:"readOnly,omitempty"`
	} `json:"volumeMounts"`
}

// deployment is an apps/v1 Deployment or StatefulSet (Kind tells which;
// the StatefulSet-only fields are refused on a Deployment by check).
type deployment struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		Replicas *int32 `json:"replicas"`
		Strategy *struct {
			Type string `json:"type"`
		} `json:"strategy,omitempty"`
		// StatefulSet only.
		ServiceName         string `json:"serviceName,omitempty"`
		PodManagementPolicy string `json:"podManagementPolicy,omitempty"`
		UpdateStrategy      *struct {
			Type string `json:"type"`
		} `json:"updateStrategy,omitempty"`
		VolumeClaimTemplates []pvc `json:"volumeClaimTemplates,omitempty"`

		Selector labelSelector `json:"selector"`
		Template struct {
			Metadata objectMeta `json:"metadata"`
			Spec     struct {
				ServiceAccountName           string `json:"serviceAccountName"`
				AutomountServiceAccountToken *bool  `json:"automountServiceAccountToken"`
				SecurityContext              struct {
					RunAsNonRoot   *bool  `json:"runAsNonRoot"`
					RunAsUser      *int64 `json:"runAsUser,omitempty"`
					RunAsGroup     *int64 `json:"runAsGroup,omitempty"`
					FSGroup        *int64 `json:"fsGroup,omitempty"`
					SeccompProfile struct {
						Type string `json:"type"`
					} `json:"seccompProfile"`
				} `json:"securityContext"`
				TopologySpreadConstraints []struct {
					MaxSkew           int32         `json:"maxSkew"`
					TopologyKey       string        `json:"topologyKey"`
					WhenUnsatisfiable string        `json:"whenUnsatisfiable"`
					LabelSelector     labelSelector `json:"labelSelector"`
				} `json:"topologySpreadConstraints,omitempty"`
				Containers []container `json:"containers"`
				Volumes    []struct {
					Name string `json:"name"`
					CSI  *struct {
						Driver   string `json:"driver"`
						ReadOnly bool   `json:"readOnly"`
					} `json:"csi,omitempty"`
					Secret *struct {
						SecretName  string `json:"secretName"`
						DefaultMode *int32 `json:"defaultMode,omitempty"`
					} `json:"secret,omitempty"`
					PersistentVolumeClaim *struct {
						ClaimName string `json:"claimName"`
					} `json:"persistentVolumeClaim,omitempty"`
				} `json:"volumes"`
			} `json:"spec"`
		} `json:"template"`
	} `json:"spec"`
}

// clusterSPIFFEID mirrors the fields of SPIRE controller-manager's
// spire.spiffe.io/v1alpha1 ClusterSPIFFEID used here.
type clusterSPIFFEID struct {
	typeMeta
	Metadata objectMeta `json:"metadata"`
	Spec     struct {
		SPIFFEIDTemplate  string        `json:"spiffeIDTemplate"`
		NamespaceSelector labelSelector `json:"namespaceSelector"`
		PodSelector       labelSelector `json:"podSelector"`
	} `json:"spec"`
}

// istioObject is an Istio custom resource: its spec is a proto message.
type istioObject struct {
	typeMeta
	Metadata objectMeta
	Spec     proto.Message
}

// manifests collects every document under istio/ for the cross-checks.
type manifests struct {
	// docs are the documents added, in apply order: a document with the
	// kind, namespace and name of an earlier one replaces it (as kubectl
	// apply of the later file would). check decodes them into the rest.
	docs []rawDoc

	mesh        []*meshv1alpha1.MeshConfig
	authz       []istioObject
	peerAuth    []istioObject
	destRules   []istioObject
	deployments []deployment
	services    []service
	pvcs        []pvc
	pdbs        []pdb
	identities  []clusterSPIFFEID
	namespaces  []string
	accounts    []serviceAccount
}

func newManifests() *manifests { return &manifests{} }

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// splitDocs splits a multi-document YAML file, dropping empty documents.
func splitDocs(data []byte) [][]byte {
	var docs [][]byte
	for _, d := range docSeparator.Split(string(data), -1) {
		js, err := yaml.YAMLToJSON([]byte(d))
		if err == nil && (bytes.Equal(js, []byte("null")) || len(bytes.TrimSpace(js)) == 0) {
			continue
		}
		docs = append(docs, []byte(d))
	}
	return docs
}

func yamlDoc(t *testing.T, data []byte) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	return doc
}

// strictJSON decodes js into v, refusing unknown fields and trailing data.
func strictJSON(js []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data")
	}
	return nil
}

// rawDoc is one document, keyed by what kubectl apply identifies it by.
type rawDoc struct {
	key string
	js  []byte
}

// add decodes every document of one file under istio/ (reporting what
// does not decode) and keeps it, replacing an earlier document with the
// same key.
func (mf *manifests) add(path string, data []byte) error {
	docs := splitDocs(data)
	if len(docs) == 0 {
		return fmt.Errorf("%s: no documents", path)
	}
	for i, d := range docs {
		js, err := yaml.YAMLToJSON(d)
		if err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
		if err := newManifests().addDoc(js); err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
		var head struct {
			typeMeta
			Metadata objectMeta `json:"metadata"`
		}
		if err := json.Unmarshal(js, &head); err != nil {
			return fmt.Errorf("document %d: %w", i, err)
		}
		key := strings.Join([]string{head.APIVersion, head.Kind, head.Metadata.Namespace, head.Metadata.Name}, "/")
		if j := slices.IndexFunc(mf.docs, func(r rawDoc) bool { return r.key == key }); j >= 0 {
			mf.docs[j].js = js
		} else {
			mf.docs = append(mf.docs, rawDoc{key: key, js: js})
		}
	}
	return nil
}

func (mf *manifests) addDoc(js []byte) error {
	var head struct {
		typeMeta
		MeshConfig json.RawMessage `json:"meshConfig"`
	}
	if err := json.Unmarshal(js, &head); err != nil {
		return err
	}
	if head.MeshConfig != nil {
		var top map[string]json.RawMessage
		if err := json.Unmarshal(js, &top); err != nil {
			return err
		}
		if len(top) != 1 {
			return fmt.Errorf("a meshConfig snippet must hold only meshConfig")
		}
		mc := &meshv1alpha1.MeshConfig{}
		if err := protojson.Unmarshal(head.MeshConfig, mc); err != nil {
			return fmt.Errorf("meshConfig: %w", err)
		}
		mf.mesh = append(mf.mesh, mc)
		return nil
	}
	switch head.APIVersion + " " + head.Kind {
	case "security.istio.io/v1 AuthorizationPolicy":
		o, err := decodeIstio(js, &securityv1.AuthorizationPolicy{})
		mf.authz = append(mf.authz, o)
		return err
	case "security.istio.io/v1 PeerAuthentication":
		o, err := decodeIstio(js, &securityv1.PeerAuthentication{})
		mf.peerAuth = append(mf.peerAuth, o)
		return err
	case "networking.istio.io/v1 DestinationRule":
		o, err := decodeIstio(js, &networkingv1.DestinationRule{})
		mf.destRules = append(mf.destRules, o)
		return err
	case "apps/v1 Deployment", "apps/v1 StatefulSet":
		var d deployment
		err := strictJSON(js, &d)
		mf.deployments = append(mf.deployments, d)
		return err
	case "v1 Service":
		var s service
		err := strictJSON(js, &s)
		mf.services = append(mf.services, s)
		return err
	case "v1 PersistentVolumeClaim":
		var p pvc
		err := strictJSON(js, &p)
		mf.pvcs = append(mf.pvcs, p)
		return err
	case "policy/v1 PodDisruptionBudget":
		var p pdb
		err := strictJSON(js, &p)
		mf.pdbs = append(mf.pdbs, p)
		return err
	case "v1 ServiceAccount":
		var sa serviceAccount
		err := strictJSON(js, &sa)
		mf.accounts = append(mf.accounts, sa)
		return err
	case "v1 Namespace":
		var ns namespace
		err := strictJSON(js, &ns)
		mf.namespaces = append(mf.namespaces, ns.Metadata.Name)
		return err
	case "spire.spiffe.io/v1alpha1 ClusterSPIFFEID":
		var c clusterSPIFFEID
		err := strictJSON(js, &c)
		mf.identities = append(mf.identities, c)
		return err
	}
	return fmt.Errorf("unchecked kind %q %q: add a decoder for it", head.APIVersion, head.Kind)
}

// decodeIstio decodes a custom resource: metadata strictly, spec strictly
// into its istio.io/api message.
func decodeIstio(js []byte, spec proto.Message) (istioObject, error) {
	var raw struct {
		typeMeta
		Metadata json.RawMessage `json:"metadata"`
		Spec     json.RawMessage `json:"spec"`
	}
	if err := strictJSON(js, &raw); err != nil {
		return istioObject{}, err
	}
	o := istioObject{typeMeta: raw.typeMeta, Spec: spec}
	if err := strictJSON(raw.Metadata, &o.Metadata); err != nil {
		return o, fmt.Errorf("metadata: %w", err)
	}
	if raw.Spec == nil {
		return o, fmt.Errorf("no spec")
	}
	if err := protojson.Unmarshal(raw.Spec, spec); err != nil {
		return o, fmt.Errorf("spec: %w", err)
	}
	return o, nil
}

// check runs the cross-file rules over everything added.
func (mf *manifests) check() violations {
	var v violations
	decoded := newManifests()
	for _, d := range mf.docs {
		if err := decoded.addDoc(d.js); err != nil {
			v.addf("%s: %v", d.key, err)
		}
	}
	return append(v, decoded.checkDecoded()...)
}

func (mf *manifests) checkDecoded() violations {
	var v violations
	providers := mf.checkMesh(&v)
	mf.checkPolicies(&v, providers)
	mf.checkDeployments(&v)
	mf.checkIdentities(&v)
	mf.checkDestinationRule(&v)
	return v
}

// checkMesh returns the extension providers, by name.
func (mf *manifests) checkMesh(v *violations) map[string]*meshv1alpha1.MeshConfig_ExtensionProvider {
	providers := map[string]*meshv1alpha1.MeshConfig_ExtensionProvider{}
	if len(mf.mesh) != 1 {
		v.addf("mesh: want exactly one meshConfig snippet, got %d", len(mf.mesh))
	}
	for _, mc := range mf.mesh {
		if mc.GetTrustDomain() != trustDomain {
			v.addf("mesh: trustDomain %q, want %q (SPIRE's)", mc.GetTrustDomain(), trustDomain)
		}
		if n := mc.GetPathNormalization().GetNormalization(); n == meshv1alpha1.MeshConfig_ProxyPathNormalization_NONE {
			v.addf("mesh: pathNormalization NONE lets policies and upstreams read paths differently")
		}
		for _, p := range mc.GetExtensionProviders() {
			providers[p.GetName()] = p
			if p.GetName() != providerName {
				continue
			}
			g := p.GetEnvoyExtAuthzGrpc()
			if g == nil {
				v.addf("mesh: provider %s must be envoyExtAuthzGrpc", p.GetName())
				continue
			}
			if g.GetFailOpen() {
				v.addf("mesh: provider %s: failOpen must be false", p.GetName())
			}
			if t := g.GetTimeout(); t == nil || t.CheckValid() != nil || t.AsDuration() <= 0 || t.AsDuration() > envoyconf.MaxCheckTimeout {
				v.addf("mesh: provider %s: timeout must be in (0, %v]", p.GetName(), envoyconf.MaxCheckTimeout)
			}
			if s := g.GetStatusOnError(); s != "" {
				if code, err := strconv.Atoi(s); err != nil || code < 400 || code > 599 {
					v.addf("mesh: provider %s: statusOnError %q must be a 4xx/5xx status", p.GetName(), s)
				}
			}
			if g.GetIncludeRequestBodyInCheck() != nil {
				v.addf("mesh: provider %s: Mandate does not read bodies; do not buffer them", p.GetName())
			}
			if !mf.hasServicePort(g.GetService(), g.GetPort()) {
				v.addf("mesh: provider %s: no Service %s with port %d in these manifests", p.GetName(), g.GetService(), g.GetPort())
			}
		}
	}
	if _, ok := providers[providerName]; !ok {
		v.addf("mesh: no extension provider %q", providerName)
	}
	return providers
}

func (mf *manifests) hasServicePort(host string, port uint32) bool {
	for _, s := range mf.services {
		if host != s.Metadata.Name+"."+s.Metadata.Namespace+".svc.cluster.local" {
			continue
		}
		for _, p := range s.Spec.Ports {
			if uint32(p.Port) == port {
				return true
			}
		}
	}
	return false
}

func (mf *manifests) checkPolicies(v *violations, providers map[string]*meshv1alpha1.MeshConfig_ExtensionProvider) {
	if len(mf.authz) == 0 {
		v.addf("no AuthorizationPolicy")
	}
	for _, o := range mf.authz {
		ap := o.Spec.(*securityv1.AuthorizationPolicy)
		where := "AuthorizationPolicy " + o.Metadata.Namespace + "/" + o.Metadata.Name
		if ap.GetAction() != securityv1.AuthorizationPolicy_CUSTOM {
			continue
		}
		name := ap.GetProvider().GetName()
		if _, ok := providers[name]; !ok {
			v.addf("%s: CUSTOM provider %q is not an extensionProvider of the mesh config", where, name)
		}
		if len(ap.GetRules()) == 0 {
			v.addf("%s: a CUSTOM policy without rules sends nothing to Mandate", where)
		}
		if ap.GetSelector() == nil && len(ap.GetTargetRefs()) == 0 {
			v.addf("%s: no selector or targetRefs", where)
		}
		for _, r := range ap.GetRules() {
			for _, to := range r.GetTo() {
				for _, p := range to.GetOperation().GetNotPaths() {
					if strings.Contains(p, "*") {
						v.addf("%s: exemption %q must be an exact path", where, p)
					}
				}
			}
		}
		if !mf.strictMTLS(o.Metadata.Namespace) {
			v.addf("%s: namespace %s has no STRICT PeerAuthentication: callers may have no identity", where, o.Metadata.Namespace)
		}
	}
}

func (mf *manifests) strictMTLS(ns string) bool {
	for _, o := range mf.peerAuth {
		pa := o.Spec.(*securityv1.PeerAuthentication)
		if (o.Metadata.Namespace == ns || o.Metadata.Namespace == "istio-system") && pa.GetSelector() == nil &&
			pa.GetMtls().GetMode() == securityv1.PeerAuthentication_MutualTLS_STRICT {
			return true
		}
	}
	return false
}

func (mf *manifests) checkDestinationRule(v *violations) {
	for _, o := range mf.destRules {
		dr := o.Spec.(*networkingv1.DestinationRule)
		if !strings.HasPrefix(dr.GetHost(), authzApp+".") {
			continue
		}
		tls := dr.GetTrafficPolicy().GetTls()
		if tls.GetMode() != networkingv1.ClientTLSSettings_ISTIO_MUTUAL {
			v.addf("DestinationRule %s: mode %v, want ISTIO_MUTUAL", o.Metadata.Name, tls.GetMode())
		}
		if !slices.Equal(tls.GetSubjectAltNames(), []string{authzSPIFFEID}) {
			v.addf("DestinationRule %s: subjectAltNames %v, want exactly [%s]", o.Metadata.Name, tls.GetSubjectAltNames(), authzSPIFFEID)
		}
		return
	}
	v.addf("no DestinationRule pins %s for calls to %s", authzSPIFFEID, authzApp)
}

// flags parses --name=value arguments.
func flags(args []string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, a := range args {
		name, value, ok := strings.Cut(a, "=")
		if !ok || !strings.HasPrefix(name, "--") || value == "" {
			return nil, fmt.Errorf("argument %q: want --name=value", a)
		}
		out[name] = append(out[name], value)
	}
	return out, nil
}

func (mf *manifests) deployment(app string) (deployment, bool) {
	for _, d := range mf.deployments {
		if d.Metadata.Name == app {
			return d, true
		}
	}
	return deployment{}, false
}

func (mf *manifests) checkDeployments(v *violations) {
	for _, app := range []string{authzApp, cpApp} {
		if _, ok := mf.deployment(app); !ok {
			v.addf("no Deployment %s", app)
		}
	}
	for _, d := range mf.deployments {
		where := d.Kind + " " + d.Metadata.Name
		app := d.Metadata.Name
		if d.Kind == "Deployment" && (d.Spec.ServiceName != "" || d.Spec.UpdateStrategy != nil || d.Spec.PodManagementPolicy != "" ||
			d.Spec.VolumeClaimTemplates != nil) {
			v.addf("%s: StatefulSet fields in a Deployment", where)
		}
		if app == etcdApp {
			mf.checkEtcd(v, d)
			continue
		}
		known, ok := knownFlags[app]
		if !ok {
			v.addf("%s: not a Mandate binary", where)
			continue
		}
		if !slices.Contains(mf.namespaces, d.Metadata.Namespace) {
			v.addf("%s: namespace %q is not declared in these manifests", where, d.Metadata.Namespace)
		}
		pod := d.Spec.Template
		if !selects(d.Spec.Selector.MatchLabels, pod.Metadata.Labels) {
			v.addf("%s: selector does not match the pod labels", where)
		}
		if pod.Metadata.Labels["sidecar.istio.io/inject"] != "false" {
			v.addf("%s: must not get an Istio sidecar: it terminates mTLS with its own SVID", where)
		}
		if !mf.hasAccount(d.Metadata.Namespace, pod.Spec.ServiceAccountName) {
			v.addf("%s: ServiceAccount %q not defined", where, pod.Spec.ServiceAccountName)
		}
		sc := pod.Spec.SecurityContext
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.SeccompProfile.Type != "RuntimeDefault" {
			v.addf("%s: pod must run as non-root with the RuntimeDefault seccomp profile", where)
		}
		replicas := int32(1)
		if d.Spec.Replicas != nil {
			replicas = *d.Spec.Replicas
		}
		if len(pod.Spec.Containers) != 1 {
			v.addf("%s: want one container", where)
			continue
		}
		c := pod.Spec.Containers[0]
		fl, err := flags(c.Args)
		if err != nil {
			v.addf("%s: %v", where, err)
			continue
		}
		onEtcd := app == cpApp && len(fl["--etcd-endpoint"]) > 0
		switch {
		case app == authzApp && replicas < 2:
			v.addf("%s: want at least 2 replicas, got %d", where, replicas)
		case onEtcd:
			// Several instances on etcd: checkCPOnEtcd.
		case app == cpApp && d.Kind != "Deployment":
			v.addf("%s: the bbolt control plane is a Deployment (etcd: give --etcd-endpoint)", where)
		case app == cpApp && replicas != 1:
			v.addf("%s: bbolt allows one writer: want 1 replica, got %d", where, replicas)
		case app == cpApp && (d.Spec.Strategy == nil || d.Spec.Strategy.Type != "Recreate"):
			v.addf("%s: want strategy Recreate, so two pods never share the data volume", where)
		}
		for name := range fl {
			if !slices.Contains(known, name) {
				v.addf("%s: unknown flag %s", where, name)
			}
		}
		if got := fl["--trust-domain"]; !slices.Equal(got, []string{trustDomain}) {
			v.addf("%s: --trust-domain %v, want %s", where, got, trustDomain)
		}
		if len(fl["--allowed-caller"]) == 0 {
			v.addf("%s: no --allowed-caller: nobody or everybody could call it", where)
		}
		for _, id := range fl["--allowed-caller"] {
			if !strings.HasPrefix(id, "spiffe://"+trustDomain+"/") {
				v.addf("%s: --allowed-caller %q is not a SPIFFE ID in %s", where, id, trustDomain)
			}
		}
		mf.checkContainer(v, where, d, c, fl)
		switch app {
		case authzApp:
			mf.checkServeFlag(v, where, d, c, fl, "--listen", 9191)
			want := []string{cpApp + "." + d.Metadata.Namespace + ".svc:18000"}
			if cp, ok := mf.deployment(cpApp); ok && cp.Kind == "StatefulSet" {
				want = []string{strings.Join(podNames(cp, 18000), ",")}
			}
			if got := fl["--xds-server"]; !slices.Equal(got, want) {
				v.addf("%s: --xds-server %v, want %v (every control-plane instance)", where, got, want)
			}
			if !mf.serviceTargets(cpApp, 18000, "xds") {
				v.addf("%s: Service %s does not expose port 18000 as xds", where, cpApp)
			}
			// Istio sends the peer certificate (include_peer_certificate):
			// mandate-authz must check it and deny without it.
			if got := fl["--require-peer-certificate"]; !slices.Equal(got, []string{"true"}) {
				v.addf("%s: --require-peer-certificate=true is not set", where)
			}
		case cpApp:
			mf.checkServeFlag(v, where, d, c, fl, "--xds-listen", 18000)
			mf.checkServeFlag(v, where, d, c, fl, "--admin-listen", 18001)
			if !slices.Contains(fl["--allowed-caller"], authzSPIFFEID) {
				v.addf("%s: --allowed-caller must admit %s (the xDS clients)", where, authzSPIFFEID)
			}
			if onEtcd {
				mf.checkCPOnEtcd(v, where, d, c, fl)
			} else {
				mf.checkDataDir(v, where, d, c, fl)
			}
		}
	}
}

func (mf *manifests) hasAccount(ns, name string) bool {
	return slices.ContainsFunc(mf.accounts, func(sa serviceAccount) bool {
		return sa.Metadata.Namespace == ns && sa.Metadata.Name == name &&
			sa.AutomountServiceAccountToken != nil && !*sa.AutomountServiceAccountToken
	})
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, want := range selector {
		if labels[k] != want {
			return false
		}
	}
	return true
}

// portName returns the container port name serving port, or "".
func portName(c container, port int32) string {
	for _, p := range c.Ports {
		if p.ContainerPort == port {
			return p.Name
		}
	}
	return ""
}

func (mf *manifests) checkContainer(v *violations, where string, d deployment, c container, fl map[string][]string) {
	csc := c.SecurityContext
	if csc == nil || csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation ||
		csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem || !slices.Equal(csc.Capabilities.Drop, []string{"ALL"}) {
		v.addf("%s: container must drop ALL capabilities, forbid privilege escalation and use a read-only root", where)
	}
	if c.Resources.Limits["memory"] == "" {
		v.addf("%s: no memory limit", where)
	}
	// The SPIFFE Workload API socket, from the SPIFFE CSI driver.
	socketVol := ""
	for _, vol := range d.Spec.Template.Spec.Volumes {
		if vol.CSI != nil && vol.CSI.Driver == spiffeCSIDriver && vol.CSI.ReadOnly {
			socketVol = vol.Name
		}
	}
	mounted := ""
	for _, m := range c.VolumeMounts {
		if m.Name == socketVol && m.ReadOnly {
			mounted = m.MountPath
		}
	}
	env := ""
	for _, e := range c.Env {
		if e.Name == spiffeSocketEnv {
			env = e.Value
		}
	}
	if socketVol == "" || mounted == "" || !strings.HasPrefix(env, "unix://"+mounted+"/") {
		v.addf("%s: %s must point into a read-only %s volume", where, spiffeSocketEnv, spiffeCSIDriver)
	}
	// Probes hit the metrics listener.
	metricsPort, err := listenPort(fl["--metrics-addr"])
	if err != nil {
		v.addf("%s: --metrics-addr: %v", where, err)
		return
	}
	for _, p := range []struct {
		probe *probe
		path  string
	}{{c.ReadinessProbe, "/readyz"}, {c.LivenessProbe, "/healthz"}} {
		if p.probe == nil {
			v.addf("%s: no probe on %s", where, p.path)
			continue
		}
		if p.probe.HTTPGet.Path != p.path || !portRefIs(p.probe.HTTPGet.Port, c, metricsPort) {
			v.addf("%s: probe %s on port %s, want %s on the --metrics-addr port %d", where, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port, p.path, metricsPort)
		}
	}
}

// portRefIs reports whether a port reference (number or container port name)
// designates port.
func portRefIs(ref json.RawMessage, c container, port int32) bool {
	var n int32
	if json.Unmarshal(ref, &n) == nil {
		return n == port
	}
	var name string
	return json.Unmarshal(ref, &name) == nil && name != "" && name == portName(c, port)
}

func listenPort(values []string) (int32, error) {
	if len(values) != 1 {
		return 0, fmt.Errorf("want exactly one value, got %v", values)
	}
	_, p, ok := strings.Cut(values[0], ":")
	n, err := strconv.ParseUint(p, 10, 16)
	if !ok || err != nil || n == 0 {
		return 0, fmt.Errorf("%q: want [host]:port", values[0])
	}
	return int32(n), nil
}

// checkServeFlag checks that flag listens on want, that the container
// declares the port, and that a Service routes to it.
func (mf *manifests) checkServeFlag(v *violations, where string, d deployment, c container, fl map[string][]string, flag string, want int32) {
	got, err := listenPort(fl[flag])
	if err != nil || got != want {
		v.addf("%s: %s %v, want :%d", where, flag, fl[flag], want)
		return
	}
	name := portName(c, want)
	if name == "" {
		v.addf("%s: container does not declare port %d", where, want)
		return
	}
	if !mf.serviceTargets(d.Metadata.Name, want, name) {
		v.addf("%s: no Service %s routes port %d to %s", where, d.Metadata.Name, want, name)
	}
	for _, s := range mf.services {
		if s.Metadata.Name == d.Metadata.Name && !selects(s.Spec.Selector, d.Spec.Template.Metadata.Labels) {
			v.addf("%s: Service %s does not select its pods", where, s.Metadata.Name)
		}
	}
}

func (mf *manifests) serviceTargets(svc string, port int32, portName string) bool {
	for _, s := range mf.services {
		if s.Metadata.Name != svc {
			continue
		}
		for _, p := range s.Spec.Ports {
			var target string
			if p.Port == port && json.Unmarshal(p.TargetPort, &target) == nil && target == portName {
				return true
			}
		}
	}
	return false
}

func (mf *manifests) checkDataDir(v *violations, where string, d deployment, c container, fl map[string][]string) {
	dirs := fl["--data-dir"]
	if len(dirs) != 1 {
		v.addf("%s: want one --data-dir", where)
		return
	}
	for _, vol := range d.Spec.Template.Spec.Volumes {
		if vol.PersistentVolumeClaim == nil {
			continue
		}
		claim := vol.PersistentVolumeClaim.ClaimName
		if !slices.ContainsFunc(mf.pvcs, func(p pvc) bool {
			return p.Metadata.Name == claim && p.Metadata.Namespace == d.Metadata.Namespace &&
				slices.Equal(p.Spec.AccessModes, []string{"ReadWriteOnce"})
		}) {
			v.addf("%s: claim %s is not a ReadWriteOnce PVC in these manifests", where, claim)
		}
		for _, m := range c.VolumeMounts {
			if m.Name == vol.Name && m.MountPath == dirs[0] && !m.ReadOnly {
				return
			}
		}
	}
	v.addf("%s: --data-dir %s is not a writable PersistentVolumeClaim mount: the store would not survive a restart", where, dirs[0])
}

func (mf *manifests) checkIdentities(v *violations) {
	want := map[string]string{authzApp: authzSPIFFEID, cpApp: cpSPIFFEID}
	seen := map[string]bool{}
	for _, c := range mf.identities {
		where := "ClusterSPIFFEID " + c.Metadata.Name
		tmpl := c.Spec.SPIFFEIDTemplate
		if !strings.HasPrefix(tmpl, "spiffe://"+trustDomainToken+"/") {
			v.addf("%s: template %q must start with spiffe://%s/", where, tmpl, trustDomainToken)
		}
		id := strings.ReplaceAll(tmpl, trustDomainToken, trustDomain)
		matched := false
		for app, wantID := range want {
			d, ok := mf.deployment(app)
			if !ok || !selects(c.Spec.PodSelector.MatchLabels, d.Spec.Template.Metadata.Labels) {
				continue
			}
			matched = true
			seen[app] = true
			if id != wantID {
				v.addf("%s: issues %s to %s, but the configs pin %s", where, id, app, wantID)
			}
			if !selects(c.Spec.NamespaceSelector.MatchLabels, map[string]string{"kubernetes.io/metadata.name": d.Metadata.Namespace}) {
				v.addf("%s: namespaceSelector does not select %s", where, d.Metadata.Namespace)
			}
		}
		if !matched {
			v.addf("%s: selects no Mandate Deployment", where)
		}
	}
	for app, id := range want {
		if !seen[app] {
			v.addf("no ClusterSPIFFEID issues %s to %s", id, app)
		}
	}
}

// loadManifests decodes the manifest set holding the file named edited
// (the HA set for a file under istio/ha/, else the single-instance one),
// after applying edit to that file's content.
func loadManifests(t *testing.T, edited string, edit func([]byte) []byte) (*manifests, error) {
	t.Helper()
	if !slices.Contains(configFiles(t), edited) {
		t.Fatalf("no file %s", edited)
	}
	base, ha, err := manifestSets(t, edited, edit)
	if err != nil {
		return nil, err
	}
	if inBaseSet(edited) {
		return base, nil
	}
	return ha, nil
}

// TestIstioManifestsRejected proves the Istio and Kubernetes checks can
// fail: each case edits one manifest and must be refused.
func TestIstioManifestsRejected(t *testing.T) {
	runManifestRejections(t, []manifestCase{
		{
			name: "CUSTOM provider not in the mesh config",
			file: "istio/authorization-policy.yaml",
			old:  "    name: mandate\n", new: "    name: mandate-v2\n",
			wantViolation: `CUSTOM provider "mandate-v2"`,
		},
		{
			name: "unknown field in an AuthorizationPolicy spec",
			file: "istio/authorization-policy.yaml",
			old:  "  action: CUSTOM\n", new: "  action: CUSTOM\n  failOpen: false\n",
			wantErr: "failOpen",
		},
		{
			name: "unknown enum value",
			file: "istio/authorization-policy.yaml",
			old:  "  action: CUSTOM\n", new: "  action: EXTERNAL\n",
			wantErr: "EXTERNAL",
		},
		{
			name: "wildcard exemption",
			file: "istio/authorization-policy.yaml",
			old:  `"/healthz"`, new: `"/healthz*"`,
			wantViolation: "exact path",
		},
		{
			name: "permissive mTLS",
			file: "istio/authorization-policy.yaml",
			old:  "mode: STRICT", new: "mode: PERMISSIVE",
			wantViolation: "STRICT PeerAuthentication",
		},
		{
			name: "provider fails open",
			file: "istio/mesh-config.yaml",
			old:  "failOpen: false", new: "failOpen: true",
			wantViolation: "failOpen",
		},
		{
			name: "provider points at a port no Service exposes",
			file: "istio/mesh-config.yaml",
			old:  "port: 9191", new: "port: 9192",
			wantViolation: "no Service",
		},
		{
			name: "unknown field in meshConfig",
			file: "istio/mesh-config.yaml",
			old:  "failOpen: false", new: "failOpen: false\n      failClosed: true",
			wantErr: "failClosed",
		},
		{
			name: "unknown flag",
			file: "istio/mandate-authz.yaml",
			old:  "--listen=:9191", new: "--listen-addr=:9191",
			wantViolation: "unknown flag --listen-addr",
		},
		{
			name: "single authz replica",
			file: "istio/mandate-authz.yaml",
			old:  "replicas: 2", new: "replicas: 1",
			wantViolation: "at least 2 replicas",
		},
		{
			name: "readiness probe on the wrong port",
			file: "istio/mandate-authz.yaml",
			old:  "path: /readyz\n            port: metrics", new: "path: /readyz\n            port: grpc",
			wantViolation: "probe /readyz",
		},
		{
			name: "typo in a Deployment field",
			file: "istio/mandate-authz.yaml",
			old:  "readinessProbe:", new: "readynessProbe:",
			wantErr: "readynessProbe",
		},
		{
			name: "DestinationRule does not pin the authorizer",
			file: "istio/mandate-authz.yaml",
			old:  "      - spiffe://example.org/mandate/authz", new: "      - spiffe://example.org/mandate/other",
			wantViolation: "subjectAltNames",
		},
		{
			name: "data dir not on the volume",
			file: "istio/mandate-cp.yaml",
			old:  "--data-dir=/var/lib/mandate-cp", new: "--data-dir=/tmp/mandate-cp",
			wantViolation: "--data-dir",
		},
		{
			name: "control plane rolling update",
			file: "istio/mandate-cp.yaml",
			old:  "type: Recreate", new: "type: RollingUpdate",
			wantViolation: "Recreate",
		},
		{
			name: "xDS clients not allowed on the control plane",
			file: "istio/mandate-cp.yaml",
			old:  "--allowed-caller=spiffe://example.org/mandate/authz", new: "--allowed-caller=spiffe://example.org/mandate/auth",
			wantViolation: "must admit",
		},
		{
			name: "SPIRE issues another ID than the one pinned",
			file: "istio/spire-identities.yaml",
			old:  "/mandate/authz\"", new: "/mandate/authorizer\"",
			wantViolation: "but the configs pin",
		},
		{
			name: "unchecked kind",
			file: "istio/spire-identities.yaml",
			old:  "kind: ClusterSPIFFEID\nmetadata:\n  name: mandate-cp", new: "kind: ClusterFederatedTrustDomain\nmetadata:\n  name: mandate-cp",
			wantErr: "unchecked kind",
		},
	})
}

// manifestCase edits one manifest (old -> new, once) and expects a decode
// error or a violation.
type manifestCase struct {
	name          string
	file          string
	old, new      string
	wantErr       string
	wantViolation string
}

func runManifestRejections(t *testing.T, tests []manifestCase) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mf, err := loadManifests(t, tt.file, func(b []byte) []byte {
				if !bytes.Contains(b, []byte(tt.old)) {
					t.Fatalf("%s does not contain %q", tt.file, tt.old)
				}
				return bytes.Replace(b, []byte(tt.old), []byte(tt.new), 1)
			})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected decode error: %v", err)
			}
			v := mf.check()
			if !slices.ContainsFunc(v, func(s string) bool { return strings.Contains(s, tt.wantViolation) }) {
				t.Fatalf("violations %q, want one mentioning %q", v, tt.wantViolation)
			}
		})
	}
}
