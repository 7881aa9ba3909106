package envoyconf

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// LoadDir reads every resource file in dir (*.yaml, *.yml, *.json; names
// starting with "." or "#" or ending with "~" are skipped, so are the
// "..data" links of a Kubernetes ConfigMap mount), decodes and validates
// each (DecodeResources), merges them and applies CheckResources to the
// whole set. A subdirectory or any other file is an error, so that nothing
// meant to be served is silently left out.
func LoadDir(dir string) (*Resources, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("envoyconf: %w", err)
	}
	all := &Resources{Origin: map[string]string{}}
	files := 0
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || strings.HasPrefix(name, "#") || strings.HasSuffix(name, "~") {
			continue
		}
		path := filepath.Join(dir, name)
		fi, err := os.Stat(path) // follows the symlinks of a ConfigMap mount
		if err != nil {
			return nil, fmt.Errorf("envoyconf: %w", err)
		}
		switch ext := filepath.Ext(name); {
		case fi.IsDir():
			return nil, fmt.Errorf("envoyconf: %s: subdirectories are not read; move its files up or out", path)
		case !fi.Mode().IsRegular() || (ext != ".yaml" && ext != ".yml" && ext != ".json"):
			return nil, fmt.Errorf("envoyconf: %s: not a .yaml, .yml or .json file", path)
		}
		data, err := readLimited(path)
		if err != nil {
			return nil, err
		}
		r, err := DecodeResources(name, data)
		if err != nil {
			return nil, err
		}
		files++
		all.Listeners = append(all.Listeners, r.Listeners...)
		all.Clusters = append(all.Clusters, r.Clusters...)
		for _, c := range r.BootstrapClusters {
			if !slices.Contains(all.BootstrapClusters, c) {
				all.BootstrapClusters = append(all.BootstrapClusters, c)
			}
		}
		for k, v := range r.Origin {
			if prev, ok := all.Origin[k]; ok {
				return nil, fmt.Errorf("envoyconf: %s: %s is also defined in %s", name, strings.Replace(k, "/", " ", 1), prev)
			}
			all.Origin[k] = v
		}
	}
	if files == 0 {
		return nil, fmt.Errorf("envoyconf: %s: no resource files", dir)
	}
	if err := CheckResources(all); err != nil {
		return nil, err
	}
	return all, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("envoyconf: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("envoyconf: %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("envoyconf: %s: larger than %d bytes", path, MaxFileSize)
	}
	return data, nil
}
