package xdsserver_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	xdsclient "github.com/mandate-dev/mandate/xds/client"
	"github.com/mandate-dev/mandate/xds/mandatev1"
	xdsserver "github.com/mandate-dev/mandate/xds/server"
)

// fanoutStreams is how many replica streams one instance serves in
// BenchmarkRevocationFanout (MANDATE_FANOUT_STREAMS overrides it).
const fanoutStreams = 1000

// fanout is one xDS server on loopback TCP and n real delta clients
// (xds/client, the code mandate-authz runs), each on its own gRPC
// connection, all in this process.
type fanout struct {
	srv     *xdsserver.Server
	n       int
	applied []chan string // per client: the revocation version it applied
}

func startFanout(tb testing.TB, n, records int) *fanout {
	tb.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := xdsserver.New(logger, xdsserver.WithRegisterer(prometheus.NewRegistry()))
	if err != nil {
		tb.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	g := grpc.NewServer(xdsserver.TransportOptions()...)
	srv.Register(g)
	// pprof labels split a CPU profile of the benchmark into the server's
	// goroutines and the clients' (goroutines inherit their creator's).
	go pprof.Do(context.Background(), pprof.Labels("side", "server"), func(context.Context) { _ = g.Serve(lis) })
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tb.Cleanup(func() {
		cancel()
		wg.Wait()
		srv.Close()
		g.Stop()
	})
	// Every type has a first version, so a replica syncs (and ACKs) all
	// of them before the measured pushes.
	for _, set := range []func() (string, error){
		func() (string, error) { return srv.SetPolicies(map[string]*mandatev1.Policy{}) },
		func() (string, error) { return srv.SetRevocations(held(records)) },
		func() (string, error) { return srv.SetApprovals(map[string]*mandatev1.Approval{}) },
		func() (string, error) { return srv.SetKeys(map[string]*mandatev1.VerificationKey{}) },
	} {
		if _, err := set(); err != nil {
			tb.Fatal(err)
		}
	}
	f := &fanout{srv: srv, n: n}
	// The clients' gRPC goroutines are created under the label too.
	pprof.SetGoroutineLabels(pprof.WithLabels(ctx, pprof.Labels("side", "client")))
	defer pprof.SetGoroutineLabels(context.Background())
	for i := range n {
		conn, err := grpc.NewClient(lis.Addr().String(), append(xdsclient.TransportOptions(),
			grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { _ = conn.Close() })
		c, err := xdsclient.New(xdsclient.Config{Conn: conn, NodeID: fmt.Sprintf("replica-%04d", i), Logger: logger,
			Heartbeat: -1, Apply: func(xdsclient.State) error { return nil }})
		if err != nil {
			tb.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Run(ctx) }()
	}
	deadline := time.Now().Add(2 * time.Minute)
	for f.connected() < n {
		if time.Now().After(deadline) {
			tb.Fatalf("%d of %d replicas connected after 2 minutes", f.connected(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return f
}

// held returns n revocation records for the replicas to hold before the
// measured pushes (they spread over min(n, ~65,536) shards).
func held(n int) map[string]*mandatev1.Revocation {
	out := make(map[string]*mandatev1.Revocation, n)
	exp := timestamppb.New(time.Now().Add(24 * time.Hour))
	for i := range n {
		name := "held-" + strconv.Itoa(i)
		out[name] = &mandatev1.Revocation{Name: name, Kind: "subject", Value: "spiffe://example.org/held/" + strconv.Itoa(i), Expires: exp}
	}
	return out
}

func (f *fanout) connected() int {
	n := 0
	for _, r := range f.srv.Status() {
		if r.Connected && len(r.Types) == len(mandatev1.TypeURLs()) {
			n++
		}
	}
	return n
}

// push commits one revocation and returns, for every replica, the time
// from the commit to the server receiving its ACK of that version.
func (f *fanout) push(tb testing.TB, ctx context.Context, i int) []time.Duration {
	tb.Helper()
	name := "r-" + strconv.Itoa(i)
	t0 := time.Now()
	v, err := f.srv.UpdateRevocations(map[string]*mandatev1.Revocation{name: {Name: name, Kind: "task",
		Value: "task-" + name, Expires: timestamppb.New(t0.Add(time.Hour))}}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	acked, err := f.srv.WaitAckedOrRejected(wctx, mandatev1.RevocationTypeURL, v)
	if err != nil || acked != f.n {
		tb.Fatalf("push %d: %d of %d replicas acked version %s: %v", i, acked, f.n, v, err)
	}
	want, _ := strconv.ParseUint(v, 10, 64)
	out := make([]time.Duration, 0, f.n)
	xdsserver.AckTimes(f.srv, mandatev1.RevocationTypeURL, func(node string, got uint64, at time.Time) {
		if got != want {
			tb.Fatalf("replica %s acked version %d, want %s", node, got, v)
		}
		out = append(out, at.Sub(t0))
	})
	if len(out) != f.n {
		tb.Fatalf("push %d: %d replicas connected, want %d", i, len(out), f.n)
	}
	return out
}

// BenchmarkRevocationFanout: one instance pushes a revocation to 1,000
// replica streams (real delta clients in this process, one gRPC
// connection each); per iteration, the time from the commit to each
// replica's ACK reaching the server. MANDATE_FANOUT_STREAMS sets the
// number of streams, MANDATE_FANOUT_RECORDS a number of records every
// replica holds before (0 by default; the cost of a push should not
// depend on it). Reports p50/p99/max over every replica and iteration
// (goal: p99 <= 200 ms), last-ms: the p50 of the time until the last ACK
// of a push, cpu-ms/push: the process CPU time per push (server and the
// 1,000 clients), gc/push: the garbage collection cycles per push,
// gc-cpu-ms/push: the runtime's estimate of the CPU they took,
// alloc-KB/push: the bytes allocated per push, and live-MB and scan-MB:
// what a cycle marks at the end, and scans. MANDATE_FANOUT_TRACE=1 logs
// each push (its first, median and last ACK, and the GC cycles during
// it: the ACKs of a push arrive together, so the p99 is the slowest
// pushes'; run with -test.v, or the testing package truncates the log
// after 10 lines);
// MANDATE_FANOUT_CPUPROFILE writes a CPU profile of the pushes only;
// MANDATE_FANOUT_MEMPROFILE writes heap profiles before (path.start) and
// after (path) the pushes, while every stream is up (go tool pprof
// -diff_base path.start path: what the pushes allocated; -sample_index
// inuse_space path: what the GC marks).
func BenchmarkRevocationFanout(b *testing.B) {
	n := fanoutStreams
	if s := os.Getenv("MANDATE_FANOUT_STREAMS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			b.Fatalf("MANDATE_FANOUT_STREAMS=%q", s)
		}
	}
	records := 0
	if s := os.Getenv("MANDATE_FANOUT_RECORDS"); s != "" {
		var err error
		if records, err = strconv.Atoi(s); err != nil || records < 0 {
			b.Fatalf("MANDATE_FANOUT_RECORDS=%q", s)
		}
	}
	f := startFanout(b, n, records)
	ctx := context.Background()
	f.push(b, ctx, -1) // warm every stream once
	trace := os.Getenv("MANDATE_FANOUT_TRACE") != ""
	if path := os.Getenv("MANDATE_FANOUT_CPUPROFILE"); path != "" {
		out, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = out.Close() }()
		if err := pprof.StartCPUProfile(out); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	memPath := os.Getenv("MANDATE_FANOUT_MEMPROFILE")
	if memPath != "" {
		writeHeap(b, memPath+".start")
	}
	var all, last []time.Duration
	cpu0 := cpuTime(b)
	r0, w0 := sysIO(b)
	gc0 := gcCycles()
	gcCPU0 := readMetric("/cpu/classes/gc/total:cpu-seconds")
	alloc0 := readMetric("/gc/heap/allocs:bytes")
	b.ResetTimer()
	pushes := 0
	for i := 0; b.Loop(); i++ {
		g := gcCycles()
		lat := f.push(b, ctx, i)
		if trace {
			s := slices.Sorted(slices.Values(lat))
			b.Logf("push %d: ACKs from %v, median %v, last %v; %d GC cycles", i, s[0].Round(time.Millisecond),
				s[len(s)/2].Round(time.Millisecond), s[len(s)-1].Round(time.Millisecond), gcCycles()-g)
		}
		all = append(all, lat...)
		last = append(last, slices.Max(lat))
		pushes++
	}
	b.StopTimer()
	if memPath != "" {
		writeHeap(b, memPath)
	}
	b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(time.Millisecond)/float64(pushes), "cpu-ms/push")
	b.ReportMetric(float64(gcCycles()-gc0)/float64(pushes), "gc/push")
	b.ReportMetric((readMetric("/cpu/classes/gc/total:cpu-seconds")-gcCPU0)*1e3/float64(pushes), "gc-cpu-ms/push")
	// What makes a GC cycle come (the bytes allocated per push) and what
	// it has to do at the end: the heap the last cycle found live, and
	// the part of it (and of the goroutine stacks) it has to scan for
	// pointers (every replica's state included). Unlike times, these do
	// not depend on the machine's other load.
	b.ReportMetric((readMetric("/gc/heap/allocs:bytes")-alloc0)/1e3/float64(pushes), "alloc-KB/push")
	runtime.GC() // after the measured pushes: the state they left, marked
	b.ReportMetric(readMetric("/gc/heap/live:bytes")/1e6, "live-MB")
	b.ReportMetric((readMetric("/gc/scan/heap:bytes")+readMetric("/gc/scan/stack:bytes"))/1e6, "scan-MB")
	if r1, w1 := sysIO(b); r1 > 0 {
		b.ReportMetric(float64(r1-r0)/float64(pushes*n), "reads/stream")
		b.ReportMetric(float64(w1-w0)/float64(pushes*n), "writes/stream")
	}
	slices.Sort(all)
	slices.Sort(last)
	ms := func(d []time.Duration, p float64) float64 {
		return float64(d[min(len(d)-1, int(p*float64(len(d))))]) / float64(time.Millisecond)
	}
	b.ReportMetric(ms(all, 0.50), "p50-ms")
	b.ReportMetric(ms(all, 0.99), "p99-ms")
	b.ReportMetric(ms(all, 1), "max-ms")
	b.ReportMetric(ms(last, 0.50), "last-ms")
	b.ReportMetric(float64(n), "streams")
	b.ReportMetric(float64(records), "records")
}

// writeHeap writes a heap profile of the live streams to path (after a
// GC, so in-use figures are current).
func writeHeap(tb testing.TB, path string) {
	runtime.GC()
	out, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer func() { _ = out.Close() }()
	if err := pprof.Lookup("heap").WriteTo(out, 0); err != nil {
		tb.Fatal(err)
	}
}

// cpuTime is the CPU time (user and system) this process used so far: on
// a shared machine, the cost of a push that other load does not inflate
// as much as wall time (server and clients together, both in here).
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// readMetric reads one runtime metric as a float (0 if unsupported).
func readMetric(name string) float64 {
	s := []metrics.Sample{{Name: name}}
	metrics.Read(s)
	switch s[0].Value.Kind() {
	case metrics.KindUint64:
		return float64(s[0].Value.Uint64())
	case metrics.KindFloat64:
		return s[0].Value.Float64()
	}
	return 0
}

// gcCycles is the number of garbage collection cycles completed so far.
func gcCycles() uint64 { return uint64(readMetric("/gc/cycles/total:gc-cycles")) }

// sysIO returns the read and write system calls this process made so far
// (Linux /proc/self/io; 0, 0 elsewhere): per push and stream, what the
// transport costs besides the CPU of the code.
func sysIO(tb testing.TB) (reads, writes int64) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, 0
	}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ": ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "syscr":
			reads = n
		case "syscw":
			writes = n
		}
	}
	return reads, writes
}

// TestRevocationFanoutSmall runs the fan-out with a few streams, so the
// benchmark's harness is exercised by the ordinary test run.
func TestRevocationFanoutSmall(t *testing.T) {
	f := startFanout(t, 20, 100)
	for i := range 3 {
		lat := f.push(t, context.Background(), i)
		if len(lat) != 20 {
			t.Fatalf("push %d: %d ACK times, want 20", i, len(lat))
		}
	}
}
