package mandatev1

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestGeneratedCodeIsFresh regenerates the Go code with protoc, the
// protoc-gen-go of the module's google.golang.org/protobuf version and the
// protoc-gen-go-grpc pinned in proto/generate.sh, and fails when the
// committed *.pb.go and *_grpc.pb.go files differ. Skipped without protoc,
// or when a plugin cannot be built (offline without a module cache).
func TestGeneratedCodeIsFresh(t *testing.T) {
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		t.Skip("protoc not installed (apt-get install -y protobuf-compiler)")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	grpcVer, err := grpcPluginVersion(filepath.Join(root, "proto/generate.sh"))
	if err != nil {
		t.Fatal(err)
	}
	tmp, bin := t.TempDir(), t.TempDir()
	plugin := filepath.Join(bin, "protoc-gen-go")
	build := exec.Command("go", "build", "-o", plugin, "google.golang.org/protobuf/cmd/protoc-gen-go")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Skipf("cannot build protoc-gen-go offline: %v\n%s", err, out)
	}
	// protoc-gen-go-grpc is its own module, outside go.mod: install the
	// pinned release (from the module cache, or the module proxy).
	install := exec.Command("go", "install", "google.golang.org/grpc/cmd/protoc-gen-go-grpc@"+grpcVer)
	install.Dir = bin
	install.Env = append(os.Environ(), "GOBIN="+bin)
	if out, err := install.CombinedOutput(); err != nil {
		t.Skipf("cannot install protoc-gen-go-grpc@%s: %v\n%s", grpcVer, err, out)
	}
	files, err := filepath.Glob(filepath.Join(root, "proto/mandate/v1/*.proto"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no proto files: %v", err)
	}
	args := []string{"--plugin=protoc-gen-go=" + plugin,
		"--plugin=protoc-gen-go-grpc=" + filepath.Join(bin, "protoc-gen-go-grpc"),
		"--proto_path=" + filepath.Join(root, "proto"),
		"--go_out=" + tmp, "--go_opt=module=github.com/mandate-dev/mandate",
		"--go-grpc_out=" + tmp, "--go-grpc_opt=module=github.com/mandate-dev/mandate"}
	args = append(args, files...)
	gen := exec.Command(protoc, args...)
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, out)
	}
	generated, err := filepath.Glob(filepath.Join(tmp, "xds/mandatev1/*.pb.go"))
	if err != nil || len(generated) == 0 {
		t.Fatalf("protoc wrote nothing: %v", err)
	}
	if g, _ := filepath.Glob(filepath.Join(tmp, "xds/mandatev1/*_grpc.pb.go")); len(g) == 0 {
		t.Fatal("protoc-gen-go-grpc wrote no *_grpc.pb.go")
	}
	committed, _ := filepath.Glob("*.pb.go")
	if len(committed) != len(generated) {
		t.Fatalf("committed %d .pb.go files, protoc makes %d: run proto/generate.sh", len(committed), len(generated))
	}
	for _, g := range generated {
		want, err := os.ReadFile(g)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Base(g))
		if err != nil {
			t.Fatalf("%s missing: run proto/generate.sh", filepath.Base(g))
		}
		// The header names the protoc release; only the code (and the
		// pinned plugin versions) must match.
		if !bytes.Equal(stripVersions(got), stripVersions(want)) {
			t.Errorf("%s is stale: run proto/generate.sh", filepath.Base(g))
		}
	}
}

// grpcPluginVersion reads the protoc-gen-go-grpc pin (grpcgenver=vX.Y.Z)
// from generate.sh.
func grpcPluginVersion(script string) (string, error) {
	b, err := os.ReadFile(script)
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`(?m)^grpcgenver=(v[0-9]+\.[0-9]+\.[0-9]+)$`).FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("%s: no grpcgenver=vX.Y.Z line", script)
	}
	return string(m[1]), nil
}

func TestGRPCPluginVersion(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, script, want string
		ok                 bool
	}{
		{"pinned", "#!/bin/sh\ngrpcgenver=v1.6.2\n", "v1.6.2", true},
		{"missing", "#!/bin/sh\n", "", false},
		{"not a version", "grpcgenver=latest\n", "", false},
		{"indented", "  grpcgenver=v1.6.2\n", "", false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, fmt.Sprint(i))
			if err := os.WriteFile(p, []byte(tt.script), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := grpcPluginVersion(p)
			if (err == nil) != tt.ok || got != tt.want {
				t.Fatalf("grpcPluginVersion = %q, %v; want %q, ok=%v", got, err, tt.want, tt.ok)
			}
		})
	}
	if _, err := grpcPluginVersion("../../proto/generate.sh"); err != nil {
		t.Fatal(err)
	}
}

// stripVersions drops the header lines naming the protoc release.
func stripVersions(b []byte) []byte {
	var out [][]byte
	for _, line := range bytes.Split(b, []byte("\n")) {
		if bytes.HasPrefix(line, []byte("// \tprotoc ")) || bytes.HasPrefix(line, []byte("// protoc ")) ||
			bytes.HasPrefix(line, []byte("// - protoc ")) {
			continue
		}
		out = append(out, line)
	}
	return bytes.Join(out, []byte("\n"))
}

func TestTypeURLsMatchMessages(t *testing.T) {
	tests := []struct {
		msg  proto.Message
		want string
	}{
		{&Policy{Name: "p"}, PolicyTypeURL},
		{&Revocation{Name: "r"}, RevocationTypeURL},
		{&Approval{Name: "a"}, ApprovalTypeURL},
		{&VerificationKey{Name: "k"}, VerificationKeyTypeURL},
	}
	if len(TypeURLs()) != len(tests) {
		t.Fatalf("TypeURLs() has %d entries, want %d", len(TypeURLs()), len(tests))
	}
	for i, tt := range tests {
		a, err := anypb.New(tt.msg)
		if err != nil {
			t.Fatal(err)
		}
		if a.GetTypeUrl() != tt.want {
			t.Errorf("type URL %q, constant %q", a.GetTypeUrl(), tt.want)
		}
		if TypeURLs()[i] != tt.want {
			t.Errorf("TypeURLs()[%d] = %q, want %q", i, TypeURLs()[i], tt.want)
		}
		named, ok := tt.msg.(interface{ GetName() string })
		if !ok || named.GetName() == "" {
			t.Errorf("%T has no GetName", tt.msg)
		}
	}
}

func TestPolicyVersion(t *testing.T) {
	a, b := PolicyVersion([]byte("x")), PolicyVersion([]byte("y"))
	if a == b || a != PolicyVersion([]byte("x")) || len(a) != len("sha256:")+64 {
		t.Fatalf("PolicyVersion not a stable content hash: %q %q", a, b)
	}
}
