package instance

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/mandate-dev/mandate/cp/drift"
	"github.com/mandate-dev/mandate/cp/issuance"
	"github.com/mandate-dev/mandate/cp/store"
)

// configFiles are the configuration files mandate-cp reads, parsed and
// validated before it opens the store or binds a port: a mistake in one
// is reported at once, holding nothing.
type configFiles struct {
	issuance *issuance.Policy // nil: no --issuance-policy
	drift    []drift.Rule     // from --drift-policy or the --drift-* flags
}

func loadConfigFiles(c *Config) (configFiles, error) {
	var f configFiles
	if c.IssuancePolicy != "" {
		p, err := readIssuancePolicy(c.IssuancePolicy)
		if err != nil {
			return f, err
		}
		f.issuance = p
	}
	switch {
	case c.DriftPolicy != "":
		b, err := os.ReadFile(c.DriftPolicy)
		if err != nil {
			return f, fmt.Errorf("drift policy: %w", err)
		}
		if f.drift, err = drift.ParsePolicy(c.DriftPolicy, b); err != nil {
			return f, err
		}
	case c.DriftThreshold > 0:
		rules, err := drift.FlagRules(c.DriftThreshold, c.DriftWindow, c.DriftAction, c.DriftIntents)
		if err != nil {
			return f, err
		}
		countDeniedByRule := c.DriftCountDeniedByRule
		rules[0].CountDeniedByRule = &countDeniedByRule
		f.drift = rules
	}
	if c.Store.KEKFile != "" {
		if _, _, err := store.ReadKEKFile(c.Store.KEKFile); err != nil {
			return f, err
		}
	}
	return f, nil
}

func readIssuancePolicy(path string) (*issuance.Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("issuance policy: %w", err)
	}
	return issuance.Parse(path, b)
}

// policySetter is the issuer's side of a reload.
type policySetter interface {
	SetPolicy(*issuance.Policy)
}

// reloadIssuance re-reads the issuance policy file into the issuer. A
// file that fails to parse changes nothing: the policy in force stays.
func reloadIssuance(path string, to policySetter, logger *slog.Logger) {
	p, err := readIssuancePolicy(path)
	if err != nil {
		logger.Error("SIGHUP: issuance policy not reloaded; the one in force stays", "file", path, "error", err)
		return
	}
	to.SetPolicy(p)
	logger.Info("SIGHUP: issuance policy reloaded", "file", path)
}
