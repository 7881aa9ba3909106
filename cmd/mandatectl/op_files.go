package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/mandate-dev/mandate/policies"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// maxPolicyFile is the largest policy file read (the control plane refuses
// larger ones too).
const maxPolicyFile = 1 << 20

// readPolicyFiles reads files and directories (policy files under them,
// test files excluded) into Policy resources named by the file's base name
// without extension.
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
		name := resourceName(f)
		if prev, dup := byName[name]; dup {
			return nil, fmt.Errorf("%s and %s would both be stored as policy %q: rename one", prev, f, name)
		}
		byName[name] = f
		out = append(out, &mandatev1.Policy{Name: name, Source: data, SourceFile: filepath.ToSlash(f)})
	}
	return out, nil
}

func resourceName(path string) string {
	base := filepath.Base(path)
	for _, ext := range []string{".yaml", ".yml"} {
		base = strings.TrimSuffix(base, ext)
	}
	return base
}
