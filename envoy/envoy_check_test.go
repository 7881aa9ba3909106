package envoy_test

import (
	"errors"
	"fmt"
	"slices"

	"github.com/mandate-dev/mandate/envoy/envoyconf"
)

// violations are breaches of Mandate's wiring rules, as listed by an
// *envoyconf.RuleError.
type violations []string

// ruleViolations splits a check's result into wiring-rule violations and
// any other error (a config Envoy itself would reject).
func ruleViolations(err error) (violations, error) {
	if err == nil {
		return nil, nil
	}
	var re *envoyconf.RuleError
	if errors.As(err, &re) {
		return re.Violations, nil
	}
	return nil, err
}

// checkEnvoy decodes and validates one bootstrap with envoyconf, then
// returns every breach of Mandate's wiring rules. The error is for configs
// Envoy itself rejects.
func checkEnvoy(data []byte) (violations, error) {
	bs, err := envoyconf.DecodeBootstrap(data)
	if err != nil {
		return nil, err
	}
	return ruleViolations(envoyconf.CheckBootstrap(bs))
}

// checkResources decodes one file of listeners and clusters mandate-cp
// serves (envoy/cp-resources), applies the wiring rules, and checks that
// every cluster it expects from the bootstrap is a static cluster of
// xds-bootstrap.yaml.
func checkResources(path string, data, bootstrap []byte) (violations, error) {
	r, err := envoyconf.DecodeResources(path, data)
	if err != nil {
		return nil, err
	}
	v, err := ruleViolations(envoyconf.CheckResources(r))
	if err != nil {
		return nil, err
	}
	bs, err := envoyconf.DecodeBootstrap(bootstrap)
	if err != nil {
		return nil, err
	}
	var static []string
	for _, c := range bs.GetStaticResources().GetClusters() {
		static = append(static, c.GetName())
	}
	for _, c := range r.BootstrapClusters {
		if !slices.Contains(static, c) {
			v = append(v, fmt.Sprintf("%s: bootstrap cluster %q is not a static cluster of xds-bootstrap.yaml", path, c))
		}
	}
	return v, nil
}

func (v *violations) addf(format string, args ...any) { *v = append(*v, fmt.Sprintf(format, args...)) }
