package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/mandate-dev/mandate/e2e/internal/spire"
	"github.com/mandate-dev/mandate/internal/etcdtest"
)

// Packages TestMain builds once per test binary run; scenarios copy them
// per identity (SPIRE's unix attestor tells workloads apart by path).
var suitePackages = []string{
	"github.com/mandate-dev/mandate/cmd/mandate-cp",
	"github.com/mandate-dev/mandate/cmd/mandate-authz",
	"github.com/mandate-dev/mandate/cmd/mandatectl",
	"github.com/mandate-dev/mandate/e2e/cmd/testagent",
	"github.com/mandate-dev/mandate/e2e/cmd/frontproxy",
	"github.com/mandate-dev/mandate/e2e/cmd/echo",
}

// builtDir holds the binaries built by TestMain (empty when neither SPIRE
// nor etcd is installed and the scenarios skip). Written once, before any test runs.
var builtDir string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	_, spireErr := spire.FindBinaries()
	_, etcdErr := etcdtest.Find()
	if spireErr == nil || os.Getenv(spire.EnvRequire) == "1" || etcdErr == nil || os.Getenv(etcdtest.RequireEnv) != "" {
		dir, err := os.MkdirTemp("", "mandate-e2e-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		args := []string{"build", "-o", dir + string(filepath.Separator)}
		if raceBuild {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, suitePackages...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: go build: %v\n%s", err, out)
			return 1
		}
		builtDir = dir
	}
	return m.Run()
}

// builtBinary returns the path of a binary built by TestMain.
func builtBinary(t testing.TB, name string) string {
	t.Helper()
	if builtDir == "" {
		t.Fatal("e2e: binaries were not built (SPIRE absent?)")
	}
	return filepath.Join(builtDir, name)
}
