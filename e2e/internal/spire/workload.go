package spire

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// BuildTimeout bounds one `go build`.
const BuildTimeout = 5 * time.Minute

// Builder builds Go main packages once each and hands out copies at
// distinct paths: every copy gets its own unix:path selector, so one
// program can run under several SPIFFE identities (all test processes run
// as the same uid, so the path is what tells them apart).
type Builder struct {
	dir   string
	mu    sync.Mutex
	built map[string]string // package -> built binary
}

// NewBuilder returns a Builder writing into a fresh temporary directory
// removed when t ends.
func NewBuilder(t testing.TB) *Builder {
	t.Helper()
	return &Builder{dir: t.TempDir(), built: map[string]string{}}
}

// Build builds pkg (an import path such as
// "github.com/mandate-dev/mandate/e2e/cmd/testagent") if not built yet and
// copies the binary to <dir>/<name>/<base of pkg>. It returns the absolute
// path of the copy. Each name must be used once.
func (b *Builder) Build(ctx context.Context, pkg, name string) (string, error) {
	if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") {
		return "", fmt.Errorf("spire: build %s: bad name %q", pkg, name)
	}
	src, err := b.buildOnce(ctx, pkg)
	if err != nil {
		return "", err
	}
	dstDir := filepath.Join(b.dir, name)
	if err := os.Mkdir(dstDir, 0o755); err != nil {
		return "", fmt.Errorf("spire: build %s as %q: %w", pkg, name, err)
	}
	dst := filepath.Join(dstDir, filepath.Base(pkg))
	if err := copyFile(src, dst); err != nil {
		return "", fmt.Errorf("spire: build %s as %q: %w", pkg, name, err)
	}
	return dst, nil
}

func (b *Builder) buildOnce(ctx context.Context, pkg string) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if p, ok := b.built[pkg]; ok {
		return p, nil
	}
	sum := sha256.Sum256([]byte(pkg))
	out := filepath.Join(b.dir, ".build-"+hex.EncodeToString(sum[:8]), filepath.Base(pkg))
	ctx, cancel := context.WithTimeout(ctx, BuildTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("spire: go build %s: %w: %s", pkg, err, msg)
	}
	b.built[pkg] = out
	return out, nil
}

// BuildWorkload builds pkg and returns a copy of the binary named for one
// identity; it fails t on error. Call it with distinct names for distinct
// identities (a single-use Builder: prefer NewBuilder when building the
// same package several times).
func BuildWorkload(t testing.TB, pkg, name string) string {
	t.Helper()
	p, err := NewBuilder(t).Build(context.Background(), pkg, name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
