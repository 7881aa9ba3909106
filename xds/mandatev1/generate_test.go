package mandatev1

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// TestGeneratedCodeIsFresh regenerates the Go code with protoc and the
// protoc-gen-go of the module's google.golang.org/protobuf version, and
// fails when the committed files differ. Skipped without protoc.
func TestGeneratedCodeIsFresh(t *testing.T) {
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		t.Skip("protoc not installed (apt-get install -y protobuf-compiler)")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	plugin := filepath.Join(tmp, "protoc-gen-go")
	build := exec.Command("go", "build", "-o", plugin, "google.golang.org/protobuf/cmd/protoc-gen-go")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Skipf("cannot build protoc-gen-go offline: %v\n%s", err, out)
	}
	files, err := filepath.Glob(filepath.Join(root, "proto/mandate/v1/*.proto"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no proto files: %v", err)
	}
	args := []string{"--plugin=protoc-gen-go=" + plugin, "--proto_path=" + filepath.Join(root, "proto"),
		"--go_out=" + tmp, "--go_opt=module=github.com/mandate-dev/mandate"}
	args = append(args, files...)
	gen := exec.Command(protoc, args...)
	if out, err := gen.CombinedOutput(); err != nil {
		t.Fatalf("protoc: %v\n%s", err, out)
	}
	generated, err := filepath.Glob(filepath.Join(tmp, "xds/mandatev1/*.pb.go"))
	if err != nil || len(generated) == 0 {
		t.Fatalf("protoc wrote nothing: %v", err)
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
		// The header names the protoc release; only the code must match.
		if !bytes.Equal(stripVersions(got), stripVersions(want)) {
			t.Errorf("%s is stale: run proto/generate.sh", filepath.Base(g))
		}
	}
}

func stripVersions(b []byte) []byte {
	var out [][]byte
	for _, line := range bytes.Split(b, []byte("\n")) {
		if bytes.HasPrefix(line, []byte("// \tprotoc ")) || bytes.HasPrefix(line, []byte("// protoc ")) {
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
