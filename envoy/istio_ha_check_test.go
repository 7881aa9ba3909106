package envoy_test

import (
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"
	"time"
)

// The highly available control plane (istio/ha/): mandate-cp instances on
// an etcd cluster. The HA set is what kubectl apply leaves with the base
// files except istio/mandate-cp.yaml (the bbolt Deployment and its volume),
// then istio/ha/ on top: an object there replaces the base object of the
// same kind, namespace and name.

const haDir = "istio/ha/"

// defaultStaleBudget is mandate-authz's --stale-budget default.
const defaultStaleBudget = 30 * time.Second

// inHASet reports whether a file under istio/ is part of the HA set, and
// inBaseSet whether it is part of the single-instance one.
func inHASet(p string) bool   { return p != "istio/mandate-cp.yaml" }
func inBaseSet(p string) bool { return !strings.HasPrefix(p, haDir) }

// manifestSets decodes the base and the HA set, with edit applied to the
// content of the file named edited (nil: none).
func manifestSets(t *testing.T, edited string, edit func([]byte) []byte) (base, ha *manifests, err error) {
	t.Helper()
	base, ha = newManifests(), newManifests()
	var overlay []string
	for _, p := range configFiles(t) {
		if fileKind(p) != kindManifest {
			continue
		}
		if !inBaseSet(p) {
			overlay = append(overlay, p) // applied after every base file
			continue
		}
		data := readFile(t, p)
		if p == edited {
			data = edit(data)
		}
		if err := base.add(p, data); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", p, err)
		}
		if inHASet(p) {
			if err := ha.add(p, data); err != nil {
				return nil, nil, fmt.Errorf("%s: %w", p, err)
			}
		}
	}
	if len(overlay) == 0 {
		t.Fatalf("no files under %s", haDir)
	}
	for _, p := range overlay {
		data := readFile(t, p)
		if p == edited {
			data = edit(data)
		}
		if err := ha.add(p, data); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", p, err)
		}
	}
	return base, ha, nil
}

// podNames returns host:port of every pod of a StatefulSet under its
// governing Service: name-0.service.namespace.svc:port, ...
func podNames(d deployment, port int) []string {
	n := int32(1)
	if d.Spec.Replicas != nil {
		n = *d.Spec.Replicas
	}
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, fmt.Sprintf("%s-%d.%s.%s.svc:%d", d.Metadata.Name, i, d.Spec.ServiceName, d.Metadata.Namespace, port))
	}
	return out
}

func replicasOf(d deployment) int32 {
	if d.Spec.Replicas == nil {
		return 1
	}
	return *d.Spec.Replicas
}

// checkCPOnEtcd checks mandate-cp instances on etcd: a StatefulSet of
// several instances, each naming itself after its pod, every etcd member
// as an endpoint over TLS with a client certificate, the key-encryption
// key and TLS files from read-only Secrets, a grace shorter than the
// replicas' staleness budget, spread over nodes, one down at a time.
func (mf *manifests) checkCPOnEtcd(v *violations, where string, d deployment, c container, fl map[string][]string) {
	if d.Kind != "StatefulSet" {
		v.addf("%s: instances on etcd are a StatefulSet (stable names for --instance-id and the replicas' list)", where)
	}
	n := replicasOf(d)
	if n < 2 {
		v.addf("%s: on etcd, want at least 2 instances, got %d", where, n)
	}
	if len(fl["--data-dir"]) > 0 {
		v.addf("%s: --data-dir with --etcd-endpoint: the state is in etcd", where)
	}
	mf.checkHeadless(v, where, d, 18000)
	if !podNamed(c, fl["--instance-id"]) {
		v.addf("%s: --instance-id %v must be $(VAR) with VAR from metadata.name: every instance needs its own name", where, fl["--instance-id"])
	}
	etcd, ok := mf.deployment(etcdApp)
	if !ok {
		v.addf("%s: --etcd-endpoint but no etcd StatefulSet in these manifests", where)
	} else {
		var want []string
		for _, p := range podNames(etcd, 2379) {
			want = append(want, "https://"+p)
		}
		if got := fl["--etcd-endpoint"]; !slices.Equal(got, want) {
			v.addf("%s: --etcd-endpoint %v, want every etcd member over TLS: %v", where, got, want)
		}
	}
	for _, f := range []string{"--etcd-cacert", "--etcd-cert", "--etcd-key", "--kek-file"} {
		if !secretFile(d, c, fl[f]) {
			v.addf("%s: %s %v is not a file of a read-only Secret mount", where, f, fl[f])
		}
	}
	grace := defaultDuration(v, where, fl, "--etcd-grace", 5*time.Second)
	if lease := defaultDuration(v, where, fl, "--etcd-lease-ttl", 5*time.Second); lease <= 0 || grace <= 0 {
		v.addf("%s: --etcd-lease-ttl and --etcd-grace must be positive", where)
	}
	if authz, ok := mf.deployment(authzApp); ok && len(authz.Spec.Template.Spec.Containers) == 1 {
		afl, err := flags(authz.Spec.Template.Spec.Containers[0].Args)
		if err == nil {
			budget := defaultDuration(v, "Deployment "+authzApp, afl, "--stale-budget", defaultStaleBudget)
			if grace >= budget {
				v.addf("%s: --etcd-grace %v must be shorter than the replicas' --stale-budget %v, or they fail closed before they move", where, grace, budget)
			}
		}
	}
	mf.checkSpreadAndBudget(v, where, d, n-1)
}

// checkEtcd checks the etcd cluster: an odd number of members (at least
// three), TLS with client certificates on both ports, the initial cluster
// naming every member, data on a claim, a budget keeping the quorum.
func (mf *manifests) checkEtcd(v *violations, d deployment) {
	where := d.Kind + " " + d.Metadata.Name
	if d.Kind != "StatefulSet" {
		v.addf("%s: etcd members are a StatefulSet", where)
		return
	}
	n := replicasOf(d)
	if n < 3 || n%2 == 0 {
		v.addf("%s: want an odd number of members, at least 3 (a quorum that survives one loss), got %d", where, n)
	}
	mf.checkHeadless(v, where, d, 2379, 2380)
	for _, s := range mf.services {
		if s.Metadata.Name == d.Spec.ServiceName && !s.Spec.PublishNotReadyAddresses {
			v.addf("%s: Service %s must publish not-ready addresses: members find each other before they are ready", where, s.Metadata.Name)
		}
	}
	pod := d.Spec.Template.Spec
	if pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		v.addf("%s: pod must run as non-root", where)
	}
	if len(pod.Containers) != 1 {
		v.addf("%s: want one container", where)
		return
	}
	c := pod.Containers[0]
	fl, err := flags(c.Args)
	if err != nil {
		v.addf("%s: %v", where, err)
		return
	}
	for name := range fl {
		if !slices.Contains(knownFlags[etcdApp], name) {
			v.addf("%s: unknown flag %s", where, name)
		}
	}
	for _, f := range []string{"--client-cert-auth", "--peer-client-cert-auth"} {
		if !slices.Equal(fl[f], []string{"true"}) {
			v.addf("%s: %s=true is not set: anyone reaching the port could read or write Mandate's state", where, f)
		}
	}
	for _, f := range []string{"--listen-client-urls", "--advertise-client-urls", "--listen-peer-urls", "--initial-advertise-peer-urls"} {
		if len(fl[f]) != 1 || !strings.HasPrefix(fl[f][0], "https://") {
			v.addf("%s: %s %v must be https", where, f, fl[f])
		}
	}
	for _, f := range []string{"--trusted-ca-file", "--cert-file", "--key-file", "--peer-trusted-ca-file", "--peer-cert-file", "--peer-key-file"} {
		if !secretFile(d, c, fl[f]) {
			v.addf("%s: %s %v is not a file of a read-only Secret mount", where, f, fl[f])
		}
	}
	var members []string
	for i, p := range podNames(d, 2380) {
		members = append(members, fmt.Sprintf("%s-%d=https://%s", d.Metadata.Name, i, p))
	}
	if got := fl["--initial-cluster"]; !slices.Equal(got, []string{strings.Join(members, ",")}) {
		v.addf("%s: --initial-cluster %v, want every member: %s", where, got, strings.Join(members, ","))
	}
	if !podNamed(c, fl["--name"]) {
		v.addf("%s: --name %v must be $(VAR) with VAR from metadata.name (the names --initial-cluster uses)", where, fl["--name"])
	}
	if !claimMount(d, c, fl["--data-dir"]) {
		v.addf("%s: --data-dir %v is not a ReadWriteOnce volumeClaimTemplate mount: a restarted member would lose its data", where, fl["--data-dir"])
	}
	if c.ReadinessProbe == nil || c.LivenessProbe == nil {
		v.addf("%s: no readiness or liveness probe", where)
	}
	csc := c.SecurityContext
	if csc == nil || csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation || !slices.Equal(csc.Capabilities.Drop, []string{"ALL"}) {
		v.addf("%s: container must drop ALL capabilities and forbid privilege escalation", where)
	}
	mf.checkSpreadAndBudget(v, where, d, n/2+1)
}

// checkHeadless checks that the StatefulSet's governing Service is
// headless, selects its pods and exposes ports.
func (mf *manifests) checkHeadless(v *violations, where string, d deployment, ports ...int32) {
	for _, s := range mf.services {
		if s.Metadata.Name != d.Spec.ServiceName || s.Metadata.Namespace != d.Metadata.Namespace {
			continue
		}
		if s.Spec.ClusterIP != "None" {
			v.addf("%s: Service %s must be headless (clusterIP: None) to name each pod", where, s.Metadata.Name)
		}
		if !selects(s.Spec.Selector, d.Spec.Template.Metadata.Labels) {
			v.addf("%s: Service %s does not select its pods", where, s.Metadata.Name)
		}
		for _, p := range ports {
			if !slices.ContainsFunc(s.Spec.Ports, func(sp servicePort) bool { return sp.Port == p }) {
				v.addf("%s: Service %s does not expose port %d", where, s.Metadata.Name, p)
			}
		}
		return
	}
	v.addf("%s: no Service %q (serviceName) in these manifests", where, d.Spec.ServiceName)
}

// checkSpreadAndBudget checks that the pods spread over nodes and that a
// PodDisruptionBudget keeps at least minAvailable of them.
func (mf *manifests) checkSpreadAndBudget(v *violations, where string, d deployment, minAvailable int32) {
	spread := false
	for _, tc := range d.Spec.Template.Spec.TopologySpreadConstraints {
		if tc.TopologyKey == "kubernetes.io/hostname" && tc.MaxSkew == 1 && tc.WhenUnsatisfiable == "DoNotSchedule" &&
			selects(tc.LabelSelector.MatchLabels, d.Spec.Template.Metadata.Labels) {
			spread = true
		}
	}
	if !spread {
		v.addf("%s: no topologySpreadConstraint (kubernetes.io/hostname, maxSkew 1, DoNotSchedule): one node could hold them all", where)
	}
	for _, p := range mf.pdbs {
		if p.Metadata.Namespace != d.Metadata.Namespace || !selects(p.Spec.Selector.MatchLabels, d.Spec.Template.Metadata.Labels) {
			continue
		}
		if p.Spec.MinAvailable == nil || *p.Spec.MinAvailable < minAvailable || *p.Spec.MinAvailable >= replicasOf(d) {
			v.addf("%s: PodDisruptionBudget %s: want minAvailable in [%d, %d)", where, p.Metadata.Name, minAvailable, replicasOf(d))
		}
		return
	}
	v.addf("%s: no PodDisruptionBudget", where)
}

// podNamed reports whether a flag's one value is $(VAR), VAR an env var
// of the container set from the pod's name.
func podNamed(c container, values []string) bool {
	if len(values) != 1 {
		return false
	}
	name, ok := strings.CutPrefix(values[0], "$(")
	if name, ok = strings.CutSuffix(name, ")"); !ok {
		return false
	}
	for _, e := range c.Env {
		if e.Name == name && e.ValueFrom != nil && e.ValueFrom.FieldRef.FieldPath == "metadata.name" {
			return true
		}
	}
	return false
}

// secretFile reports whether a flag's one value is a file directly under
// a read-only mount of a Secret volume.
func secretFile(d deployment, c container, values []string) bool {
	if len(values) != 1 {
		return false
	}
	dir := path.Dir(values[0])
	for _, vol := range d.Spec.Template.Spec.Volumes {
		if vol.Secret == nil || vol.Secret.SecretName == "" {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == vol.Name && m.ReadOnly && m.MountPath == dir {
				return true
			}
		}
	}
	return false
}

// claimMount reports whether a flag's one value is the writable mount of
// a ReadWriteOnce volumeClaimTemplate.
func claimMount(d deployment, c container, values []string) bool {
	if len(values) != 1 {
		return false
	}
	for _, vct := range d.Spec.VolumeClaimTemplates {
		if !slices.Equal(vct.Spec.AccessModes, []string{"ReadWriteOnce"}) {
			continue
		}
		for _, m := range c.VolumeMounts {
			if m.Name == vct.Metadata.Name && m.MountPath == values[0] && !m.ReadOnly {
				return true
			}
		}
	}
	return false
}

// defaultDuration parses a duration flag, def when absent.
func defaultDuration(v *violations, where string, fl map[string][]string, name string, def time.Duration) time.Duration {
	vals := fl[name]
	if len(vals) == 0 {
		return def
	}
	d, err := time.ParseDuration(vals[len(vals)-1])
	if err != nil {
		v.addf("%s: %s %q: %v", where, name, vals[len(vals)-1], err)
		return def
	}
	return d
}

// TestIstioHAManifestsRejected proves the HA checks can fail: each case
// edits one file of the HA set and must be refused.
func TestIstioHAManifestsRejected(t *testing.T) {
	const (
		cp    = haDir + "mandate-cp.yaml"
		etcd  = haDir + "etcd.yaml"
		authz = haDir + "mandate-authz.yaml"
	)
	runManifestRejections(t, []manifestCase{
		{name: "one instance on etcd", file: cp, old: "  replicas: 3\n", new: "  replicas: 1\n",
			wantViolation: "at least 2 instances"},
		{name: "a bbolt data dir beside etcd", file: cp, old: "- --kek-file=", new: "- --data-dir=/var/lib/mandate-cp\n        - --kek-file=",
			wantViolation: "--data-dir with --etcd-endpoint"},
		{name: "etcd in plaintext", file: cp, old: "--etcd-endpoint=https://etcd-1", new: "--etcd-endpoint=http://etcd-1",
			wantViolation: "want every etcd member over TLS"},
		{name: "an etcd member left out", file: cp, old: "        - --etcd-endpoint=https://etcd-2.etcd.mandate-system.svc:2379\n", new: "",
			wantViolation: "want every etcd member"},
		{name: "every instance with the same name", file: cp, old: "--instance-id=$(POD_NAME)", new: "--instance-id=mandate-cp",
			wantViolation: "--instance-id"},
		{name: "key-encryption key outside a Secret", file: cp, old: "--kek-file=/etc/mandate/kek/kek", new: "--kek-file=/tmp/kek",
			wantViolation: "--kek-file"},
		{name: "grace past the replicas' budget", file: cp, old: "--etcd-grace=5s", new: "--etcd-grace=45s",
			wantViolation: "shorter than the replicas' --stale-budget"},
		{name: "unknown control-plane flag", file: cp, old: "--etcd-grace=5s", new: "--etcd-grace-period=5s",
			wantViolation: "unknown flag --etcd-grace-period"},
		{name: "instances not spread over nodes", file: cp, old: "topologyKey: kubernetes.io/hostname", new: "topologyKey: topology.kubernetes.io/zone",
			wantViolation: "topologySpreadConstraint"},
		{name: "every instance may be drained at once", file: cp, old: "  minAvailable: 2\n", new: "  minAvailable: 0\n",
			wantViolation: "PodDisruptionBudget"},
		{name: "peers Service not headless", file: cp, old: "  clusterIP: None\n", new: "",
			wantViolation: "headless"},
		{name: "replicas miss an instance", file: authz, old: ",mandate-cp-2.mandate-cp-peers.mandate-system.svc:18000", new: "",
			wantViolation: "every control-plane instance"},
		{name: "replicas on the load-balanced Service", file: authz,
			old: "mandate-cp-0.mandate-cp-peers.mandate-system.svc:18000,mandate-cp-1.mandate-cp-peers.mandate-system.svc:18000,mandate-cp-2.mandate-cp-peers.mandate-system.svc:18000",
			new: "mandate-cp.mandate-system.svc:18000", wantViolation: "every control-plane instance"},
		{name: "even number of etcd members", file: etcd, old: "  replicas: 3\n", new: "  replicas: 4\n",
			wantViolation: "odd number of members"},
		{name: "etcd without client certificates", file: etcd, old: "--client-cert-auth=true", new: "--client-cert-auth=false",
			wantViolation: "--client-cert-auth=true"},
		{name: "etcd initial cluster misses a member", file: etcd, old: ",etcd-2=https://etcd-2.etcd.mandate-system.svc:2380", new: "",
			wantViolation: "--initial-cluster"},
		{name: "etcd data not on a claim", file: etcd, old: "--data-dir=/var/lib/etcd", new: "--data-dir=/tmp/etcd",
			wantViolation: "volumeClaimTemplate"},
		{name: "etcd budget below quorum", file: etcd, old: "  minAvailable: 2\n", new: "  minAvailable: 1\n",
			wantViolation: "PodDisruptionBudget"},
		{name: "etcd members hidden until ready", file: etcd, old: "  publishNotReadyAddresses: true\n", new: "",
			wantViolation: "not-ready addresses"},
		{name: "unknown etcd flag", file: etcd, old: "--initial-cluster-token=", new: "--initial-cluster-tokn=",
			wantViolation: "unknown flag --initial-cluster-tokn"},
		{name: "typo in a StatefulSet field", file: etcd, old: "podManagementPolicy:", new: "podManagmentPolicy:",
			wantErr: "podManagmentPolicy"},
		{name: "the bbolt control plane as a StatefulSet", file: "istio/mandate-cp.yaml", old: "kind: Deployment", new: "kind: StatefulSet",
			wantViolation: "is a Deployment"},
	})
}
