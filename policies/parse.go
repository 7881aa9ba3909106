package policies

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/mandate-dev/mandate/internal/yamldoc"
)

// Parse decodes the Policy documents of one YAML stream (documents
// separated by "---") and validates each on its own. Unknown fields,
// duplicate keys and documents of another kind are errors; documents
// holding only comments are skipped. filename labels errors and becomes
// each policy's SourceFile. Cross-policy checks (unique names) and CEL
// compilation happen in Compile.
func Parse(filename string, data []byte) ([]*Policy, error) {
	docs, err := yamldoc.Split(data)
	if err != nil {
		return nil, &ValidationError{File: filename, Err: err}
	}
	var (
		out  []*Policy
		errs errList
	)
	for _, d := range docs {
		p := &Policy{}
		if err := yamldoc.Decode(d, p); err != nil {
			if errors.Is(err, yamldoc.ErrEmpty) {
				continue
			}
			errs.add(filename, "", "", "", err)
			continue
		}
		p.SourceFile = filename
		p.Source = d.Data
		checkPolicy(p, &errs)
		out = append(out, p)
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	return out, nil
}

// ReadFile reads and parses one policy file.
func ReadFile(path string) ([]*Policy, error) {
	data, err := readLimited(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// ReadDir reads and parses every policy file under dir (see PolicyFiles),
// in sorted path order.
func ReadDir(dir string) ([]*Policy, error) {
	files, err := PolicyFiles(dir)
	if err != nil {
		return nil, err
	}
	var (
		out  []*Policy
		errs []error
	)
	for _, f := range files {
		ps, err := ReadFile(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, ps...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// LoadFile reads, parses and compiles one policy file.
func LoadFile(path string) (*Set, error) {
	ps, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Compile(ps)
}

// LoadDir reads, parses and compiles every policy file under dir.
func LoadDir(dir string) (*Set, error) {
	ps, err := ReadDir(dir)
	if err != nil {
		return nil, err
	}
	return Compile(ps)
}

// PolicyFiles lists the policy files under dir, recursively and sorted:
// files named *.yaml or *.yml, except policy test files (*_test.yaml,
// *.test.yaml and their .yml forms) and hidden files and directories
// (names starting with '.').
func PolicyFiles(dir string) ([]string, error) {
	return walkYAML(dir, func(name string) bool { return !IsTestFile(name) })
}

// TestFiles lists the policy test files under dir, recursively and sorted.
func TestFiles(dir string) ([]string, error) {
	return walkYAML(dir, IsTestFile)
}

// IsTestFile reports whether a file name is a policy test file name.
func IsTestFile(name string) bool {
	base := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(name), ".yaml"), ".yml")
	return strings.HasSuffix(base, "_test") || strings.HasSuffix(base, ".test")
}

func walkYAML(dir string, keep func(string) bool) ([]string, error) {
	var files []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if path != dir && strings.HasPrefix(name, ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return nil
		}
		if !d.Type().IsRegular() && d.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		if (strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) && keep(name) {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policies: listing %s: %w", dir, err)
	}
	sort.Strings(files)
	return files, nil
}

// readLimited reads a file of at most yamldoc.MaxSize bytes.
func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("policies: %s: not a regular file", path)
	}
	if st.Size() > yamldoc.MaxSize {
		return nil, fmt.Errorf("policies: %s: %d bytes exceeds the %d byte limit", path, st.Size(), yamldoc.MaxSize)
	}
	data := make([]byte, st.Size())
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, fmt.Errorf("policies: reading %s: %w", path, err)
	}
	return data, nil
}

// LoadFS reads, parses and compiles every policy file of fsys (the same
// selection as PolicyFiles: *.yaml and *.yml, recursively, no test or
// hidden files), for policy sets embedded in a binary.
func LoadFS(fsys fs.FS) (*Set, error) {
	var files []string
	err := fs.WalkDir(fsys, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if path != "." && strings.HasPrefix(name, ".") {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if !d.IsDir() && (strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) && !IsTestFile(name) {
			files = append(files, path)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policies: listing: %w", err)
	}
	sort.Strings(files)
	var (
		ps   []*Policy
		errs []error
	)
	for _, f := range files {
		data, err := fs.ReadFile(fsys, f)
		if err != nil {
			errs = append(errs, fmt.Errorf("policies: %w", err))
			continue
		}
		if len(data) > yamldoc.MaxSize {
			errs = append(errs, fmt.Errorf("policies: %s: %d bytes exceeds the %d byte limit", f, len(data), yamldoc.MaxSize))
			continue
		}
		got, err := Parse(f, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ps = append(ps, got...)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return Compile(ps)
}
