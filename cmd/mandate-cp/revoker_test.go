package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/mandate-dev/mandate/xds/mandatev1"
)

// revokerEnv, set to an admin address, makes the test binary a revoker
// (runRevoker) instead of running tests; storeWriteEnv names the bare
// store write it times (newStoreWrite).
const (
	revokerEnv    = "MANDATE_BENCH_REVOKER"
	storeWriteEnv = "MANDATE_BENCH_STORE_WRITE"
)

// runRevoker reads commands from in, a line each, and answers each with
// a line on out: "revoke <subject>" revokes subject through the admin
// API at addr and answers with the wall-clock time the call began (Unix
// nanoseconds), its duration and the version; "write" makes the bare
// store write described by storeWrite and answers with its duration. A
// failure answers "error" and why. It first writes "ready" once
// connected.
func runRevoker(ctx context.Context, addr, storeWrite string, in io.Reader, out io.Writer) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer cc.Close()
	c := mandatev1.NewAdminClient(cc)
	if _, err := c.Status(ctx, &mandatev1.StatusRequest{}); err != nil {
		return err
	}
	write, closeWrite, err := newStoreWrite(ctx, storeWrite)
	if err != nil {
		return err
	}
	defer closeWrite()
	w := bufio.NewWriter(out)
	say := func(format string, a ...any) error {
		fmt.Fprintf(w, format+"\n", a...)
		return w.Flush()
	}
	if err := say("ready"); err != nil {
		return err
	}
	lines := bufio.NewScanner(in)
	for lines.Scan() {
		t0 := time.Now()
		var answer string
		var err error
		switch cmd, arg, _ := strings.Cut(lines.Text(), " "); {
		case cmd == "revoke":
			var r *mandatev1.RevokeResponse
			r, err = c.Revoke(ctx, &mandatev1.RevokeRequest{Kind: "subject", Value: arg, Ttl: durationpb.New(time.Hour)})
			answer = fmt.Sprintf("%d %d %s", t0.UnixNano(), time.Since(t0), r.GetVersion())
		case cmd == "write" && write != nil:
			err = write(ctx)
			answer = strconv.FormatInt(int64(time.Since(t0)), 10)
		default:
			err = fmt.Errorf("unknown command %q", lines.Text())
		}
		if err != nil {
			answer = "error " + strings.ReplaceAll(err.Error(), "\n", " ")
		}
		if err := say("%s", answer); err != nil {
			return err
		}
	}
	return lines.Err()
}

// revoker sends the propagation benchmarks' Revoke calls from a process
// of its own (the test binary run as runRevoker), as an operator's
// mandatectl would, instead of from the load generator's process, whose
// one P also runs the load loops and their connections' reads and
// writes: a Revoke sent from there waits for that P before it leaves
// and is timed from before that wait.
type revoker struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

// startRevoker starts the revoker process on the admin address addr
// with n Ps (every core when 0) and the bare store write storeWrite
// (newStoreWrite), or returns nil when BENCH_REVOKE_FROM=load asks for
// the Revoke calls from this process.
func startRevoker(tb tb, addr string, n int, storeWrite string) *revoker {
	tb.Helper()
	switch v := os.Getenv("BENCH_REVOKE_FROM"); v {
	case "", "own":
	case "load":
		return nil
	default:
		tb.Fatalf("BENCH_REVOKE_FROM=%q: want own or load", v)
	}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), revokerEnv+"="+addr, storeWriteEnv+"="+storeWrite)
	if n > 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("GOMAXPROCS=%d", n))
	}
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = in.Close(); _ = cmd.Wait() })
	r := &revoker{in: in, out: bufio.NewScanner(out)}
	if !r.out.Scan() || r.out.Text() != "ready" {
		tb.Fatalf("revoker did not start: %q %v", r.out.Text(), r.out.Err())
	}
	return r
}

// revoke revokes subject and returns when the call began (wall clock),
// how long it took and the version it returned.
func (r *revoker) revoke(subject string) (time.Time, time.Duration, string, error) {
	line, err := r.ask("revoke " + subject)
	if err != nil {
		return time.Time{}, 0, "", err
	}
	f := strings.Fields(line)
	if len(f) != 3 {
		return time.Time{}, 0, "", fmt.Errorf("revoker: bad line %q", line)
	}
	t0, err1 := strconv.ParseInt(f[0], 10, 64)
	d, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return time.Time{}, 0, "", fmt.Errorf("revoker: bad line %q", line)
	}
	return time.Unix(0, t0), time.Duration(d), f[2], nil
}

// storeWrite times one bare write of the store (newStoreWrite).
func (r *revoker) storeWrite() (time.Duration, error) {
	line, err := r.ask("write")
	if err != nil {
		return 0, err
	}
	d, err := strconv.ParseInt(line, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("revoker: bad line %q", line)
	}
	return time.Duration(d), nil
}

// ask sends cmd and returns the answer.
func (r *revoker) ask(cmd string) (string, error) {
	if _, err := fmt.Fprintln(r.in, cmd); err != nil {
		return "", err
	}
	if !r.out.Scan() {
		return "", fmt.Errorf("revoker: %w", io.ErrUnexpectedEOF)
	}
	line := r.out.Text()
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		return "", fmt.Errorf("revoker: %s", msg)
	}
	return line, nil
}

// storeWriteSize is the size of a bare store write: about a Revoke's
// commit (the record and its audit entry).
const storeWriteSize = 1 << 10

// newStoreWrite returns the bare write of the store that spec names,
// the floor under a revocation's commit, with nothing of mandate-cp in
// it: "fsync:<dir>", a storeWriteSize write into a preallocated file in
// dir and its fdatasync, as the write-ahead log of a bbolt mandate-cp
// does (dir on the same file system as its data directory);
// "etcd:<endpoint>,...", a storeWriteSize Put sent to the cluster's
// leader, as mandate-cp sends its commits. "" is no write (nil).
func newStoreWrite(ctx context.Context, spec string) (func(context.Context) error, func(), error) {
	kind, arg, _ := strings.Cut(spec, ":")
	val := strings.Repeat("x", storeWriteSize)
	switch kind {
	case "":
		return nil, func() {}, nil
	case "fsync":
		f, err := os.Create(filepath.Join(arg, "store-write.log"))
		if err != nil {
			return nil, nil, err
		}
		const size = 1 << 20
		if _, err := f.WriteAt(make([]byte, size), 0); err != nil {
			return nil, nil, err
		}
		if err := f.Sync(); err != nil {
			return nil, nil, err
		}
		var off int64
		return func(context.Context) error {
			if _, err := f.WriteAt([]byte(val), off); err != nil {
				return err
			}
			off = (off + storeWriteSize) % size
			return syscall.Fdatasync(int(f.Fd()))
		}, func() { _ = f.Close() }, nil
	case "etcd":
		leader, err := etcdLeader(ctx, strings.Split(arg, ","))
		if err != nil {
			return nil, nil, err
		}
		n := 0
		return func(ctx context.Context) error {
			n++
			_, err := leader.Put(ctx, fmt.Sprintf("/mandate-bench/store-write/%d", n%64), val)
			return err
		}, func() { _ = leader.Close() }, nil
	}
	return nil, nil, fmt.Errorf("store write %q: want fsync:<dir> or etcd:<endpoints>", spec)
}

// etcdLeader returns a client of the member that leads the cluster.
func etcdLeader(ctx context.Context, endpoints []string) (*clientv3.Client, error) {
	for _, ep := range endpoints {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
		if err != nil {
			return nil, err
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := c.Status(sctx, ep)
		cancel()
		if err == nil && st.Leader == st.Header.GetMemberId() {
			return c, nil
		}
		_ = c.Close()
	}
	return nil, fmt.Errorf("no leader among %v", endpoints)
}

// TestRevoker runs the propagation benchmarks' revoker process against a
// real mandate-cp, so the ordinary test run keeps it working: a revoke
// stores the record at the version it answers, the bare store write is
// timed, and an unknown command is an error, not an answer.
func TestRevoker(t *testing.T) {
	t.Setenv("BENCH_REVOKE_FROM", "own")
	cp := startCP(t, t.TempDir(), "127.0.0.1:0", "127.0.0.1:0")
	rev := startRevoker(t, cp.addrs["admin"], 1, "fsync:"+t.TempDir())
	const subject = "spiffe://example.org/agent/revoker-test"
	before := time.Now()
	t0, rpc, version, err := rev.revoke(subject)
	if err != nil {
		t.Fatal(err)
	}
	if t0.Before(before.Add(-time.Second)) || rpc <= 0 || version == "" {
		t.Fatalf("revoke answered began %v (test at %v), took %v, version %q", t0, before, rpc, version)
	}
	resp, err := adminClient(t, cp).ListRevocations(context.Background(), &mandatev1.ListRevocationsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVersion() != version || len(resp.GetRevocations()) != 1 || resp.GetRevocations()[0].GetValue() != subject {
		t.Fatalf("after the revoker's revoke at version %s: version %s, records %v", version, resp.GetVersion(), resp.GetRevocations())
	}
	if d, err := rev.storeWrite(); err != nil || d <= 0 {
		t.Fatalf("store write: %v, %v", d, err)
	}
	if _, err := rev.ask("nonsense"); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Fatalf("unknown command: %v", err)
	}
}
