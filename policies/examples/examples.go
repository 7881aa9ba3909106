// Package examples embeds the example policy sets, so that mandate-authz
// can run on them with no policy directory: Mandate's default for a first
// run. The YAML files next to this one are the source; their *_test.yaml
// cases run with `mandatectl test policies/examples`.
package examples

import "embed"

// FS holds the example policies and their test files.
//
//go:embed *.yaml
var FS embed.FS
