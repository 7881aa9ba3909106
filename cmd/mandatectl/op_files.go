package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// maxPolicyFile is the largest policy file read (the control plane refuses
// larger ones too).
const maxPolicyFile = 1 << 20

// readPolicyFiles reads files and directories (policy files under them,
// test files excluded) into Policy resources named by the policy's
// metadata.name, the one name a policy has in YAML, the store, get,
// delete, diff, logs and approvals; the file path is kept as metadata.
// A file holds one policy.
func readPolicyFiles(paths []string) ([]*mandatev1.Policy, error) {
	var files []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		fs, err := policies.PolicyFiles(p)
		if err != nil {
			return nil, err
		}
		if len(fs) == 0 {
			return nil, fmt.Errorf("%s: no policy files (*.yaml, *.yml)", p)
		}
		files = append(files, fs...)
	}
	byName := map[string]string{}
	var out []*mandatev1.Policy
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			return nil, err
		}
		if fi.Size() > maxPolicyFile {
			return nil, fmt.Errorf("%s: %d bytes exceeds %d", f, fi.Size(), maxPolicyFile)
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		ps, err := policies.Parse(f, data)
		if err != nil {
			return nil, err
		}
		if len(ps) != 1 {
			return nil, fmt.Errorf("%s: holds %d policies: want one policy per file", f, len(ps))
		}
		name := ps[0].Metadata.Name
		if prev, dup := byName[name]; dup {
			return nil, fmt.Errorf("%s and %s both define policy %q: rename one", prev, f, name)
		}
		byName[name] = f
		out = append(out, &mandatev1.Policy{Name: name, Source: data, SourceFile: filepath.ToSlash(f)})
	}
	return out, nil
}
