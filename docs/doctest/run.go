package doctest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Runner runs walk-throughs.
type Runner struct {
	// Repo is the repository root; every walk-through runs in a fresh
	// copy of it (without .git and bin/).
	Repo string
	// Isolate runs each walk-through in a private network namespace
	// (unshare -rn): the documented fixed ports (9191, 18000, ...) then
	// never collide with another run or anything else on the machine.
	Isolate bool
	// Env is added to the environment of the shell.
	Env []string
	// Bin, if set, is a directory of binaries (see Prebuild) copied to
	// the copy's bin/: a walk-through's `go build -o bin/ ./cmd/...`
	// then finds them up to date instead of linking them again.
	Bin string
}

// Prebuild builds ./cmd/... of repo into dir, as a walk-through's
// `go build -o bin/ ./cmd/...` would (same environment, -trimpath so that
// the repository's location does not matter).
func Prebuild(ctx context.Context, repo, dir string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator), "./cmd/...")
	cmd.Dir = repo
	cmd.Env = environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("doctest: go build ./cmd/...: %v\n%s", err, out)
	}
	return nil
}

// Result of one step.
type Result struct {
	Step Step
	Ran  bool     // false: the walk-through stopped before it
	Code int      // exit status (console) or of the block (sh)
	Got  []string // output lines
}

// OK reports whether the step ran and did what the document says.
func (r Result) OK() bool {
	if !r.Ran {
		return false
	}
	if r.Step.Kind == Shell {
		return r.Code == 0
	}
	return Match(r.Step.Want, r.Got)
}

// CanIsolate reports whether unshare -rn works here.
func CanIsolate(ctx context.Context) bool {
	if _, err := exec.LookPath("unshare"); err != nil {
		return false
	}
	return exec.CommandContext(ctx, "unshare", "-rn", "true").Run() == nil
}

// Run runs w in dir (created, empty) and returns one result per step.
// The error reports a walk-through that could not run or did not finish
// (timeout, an sh block failed): the results say how far it got.
func (r Runner) Run(ctx context.Context, dir string, w Walkthrough) ([]Result, error) {
	repo := filepath.Join(dir, "repo")
	out := filepath.Join(dir, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, fmt.Errorf("doctest: %w", err)
	}
	if err := copyTree(r.Repo, repo, true); err != nil {
		return nil, err
	}
	if r.Bin != "" {
		if err := copyTree(r.Bin, filepath.Join(repo, "bin"), false); err != nil {
			return nil, err
		}
	}
	script := filepath.Join(dir, "walkthrough.sh")
	if err := os.WriteFile(script, []byte(buildScript(w, repo, out)), 0o644); err != nil {
		return nil, fmt.Errorf("doctest: %w", err)
	}
	logf, err := os.Create(filepath.Join(dir, "shell.log"))
	if err != nil {
		return nil, fmt.Errorf("doctest: %w", err)
	}
	defer logf.Close()
	var cmd *exec.Cmd
	if r.Isolate {
		cmd = exec.CommandContext(ctx, "unshare", "-rn", "bash", "-c", `ip link set lo up 2>/dev/null || true; exec bash "$0"`, script)
	} else {
		cmd = exec.CommandContext(ctx, "bash", script)
	}
	cmd.Dir = repo
	cmd.Env = append(environ(), r.Env...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	if cmd.Process != nil {
		// Whatever the walk-through left running (servers started with &).
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	results := make([]Result, len(w.Steps))
	for i, st := range w.Steps {
		results[i] = Result{Step: st}
		rc, err := os.ReadFile(filepath.Join(out, strconv.Itoa(i)+".rc"))
		if err != nil {
			continue
		}
		results[i].Ran = true
		results[i].Code, _ = strconv.Atoi(strings.TrimSpace(string(rc)))
		b, _ := os.ReadFile(filepath.Join(out, strconv.Itoa(i)))
		s := strings.TrimRight(string(b), "\n ")
		if s != "" {
			results[i].Got = strings.Split(s, "\n")
		}
	}
	switch {
	case ctx.Err() != nil:
		return results, fmt.Errorf("doctest: %s %q: %w", w.File, w.Name, ctx.Err())
	case runErr != nil:
		log, _ := os.ReadFile(logf.Name())
		return results, fmt.Errorf("doctest: %s %q: shell: %v\n%s", w.File, w.Name, runErr, log)
	}
	return results, nil
}

// buildScript turns w into one bash script: variables set by one step
// (TOKEN=$(...)) are seen by the next. Each step's output goes to out/N,
// its status to out/N.rc; an sh block runs under set -e and a failure
// ends the walk-through. Background jobs are stopped at exit.
func buildScript(w Walkthrough, repo, out string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "cd %s || exit 90\n", shellQuote(repo))
	b.WriteString("trap 'kill $(jobs -p) 2>/dev/null' EXIT\n")
	for i, st := range w.Steps {
		f := shellQuote(filepath.Join(out, strconv.Itoa(i)))
		fmt.Fprintf(&b, "\n# %s\n", st.Name())
		if st.Kind == Shell {
			fmt.Fprintf(&b, "{ set -e\n%s\nset +e\n} >%s 2>&1 </dev/null\n__rc=$?\necho $__rc >%s.rc\n[ $__rc = 0 ] || exit 91\n", st.Command, f, f)
			continue
		}
		fmt.Fprintf(&b, "{ %s\n} >%s 2>&1 </dev/null\necho $? >%s.rc\n", st.Command, f, f)
	}
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// environ is the test's environment without what would make a
// walk-through depend on the machine: no Workload API socket, times in
// UTC, no module downloads.
func environ() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "SPIFFE_ENDPOINT_SOCKET", "TZ", "GOPROXY", "GOFLAGS":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "TZ=UTC", "GOPROXY=off", "GOFLAGS=-mod=mod -buildvcs=false -trimpath")
}

// copyTree copies the directory src to dst, without .git (and without
// bin/ when skipBin: the repository's own builds).
func copyTree(src, dst string, skipBin bool) error {
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || (rel == "bin" && skipBin)) {
			return filepath.SkipDir
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case !d.Type().IsRegular():
			return nil
		}
		return copyFile(p, target)
	})
	if err != nil {
		return fmt.Errorf("doctest: copy %s: %w", src, err)
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) { // removed while we walked
			return nil
		}
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	outf, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fi.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(outf, in); err != nil {
		outf.Close()
		return err
	}
	return outf.Close()
}
