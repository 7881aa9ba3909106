package authz

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
)

// heapInUse is the heap and goroutine stacks in use after a GC.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// h2conn opens a raw HTTP/2 connection: preface and SETTINGS, as a client
// that then does nothing, or opens streams it never finishes.
func h2conn(t *testing.T, addr string) (net.Conn, *http2.Framer) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c, fr
}

// waitPingAck sends a PING and reads until its ACK: the server has then
// read every frame sent before it.
func waitPingAck(t *testing.T, c net.Conn, fr *http2.Framer) {
	t.Helper()
	data := [8]byte{'m', 'a', 'n', 'd', 'a', 't', 'e', '!'}
	if err := fr.WritePing(false, data); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for PING ack: %v", err)
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			if f.IsAck() && f.Data == data {
				return
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		}
	}
}

// TestServerLimitsBoundMemory opens 1,000 idle HTTP/2 connections and
// 10,000 half-open Check streams (HEADERS without END_STREAM, no message)
// against a Check server with ServerOptions, and reports the memory they
// hold. The streams are capped per connection (MaxConcurrentStreams) and
// idle connections are closed after MaxConnectionIdle.
func TestServerLimitsBoundMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 1,010 connections and 10,000 streams")
	}
	h := newHarness(t, nil)
	codec, err := NewCodec(0)
	if err != nil {
		t.Fatal(err)
	}
	const perConn = 1000
	gs := grpc.NewServer(ServerOptions(codec, Limits{MaxConcurrentStreams: perConn, MaxConnectionIdle: 3 * time.Second})...)
	authv3.RegisterAuthorizationServer(gs, h.srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	addr := lis.Addr().String()
	base := heapInUse()

	// 1,000 idle connections.
	idle := make([]net.Conn, 0, 1000)
	for i := 0; i < 1000; i++ {
		c, fr := h2conn(t, addr)
		waitPingAck(t, c, fr)
		idle = append(idle, c)
	}
	afterIdle := heapInUse()

	// 10,000 half-open streams on 10 connections, each at the limit.
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/envoy.service.auth.v3.Authorization/Check"},
		{":authority", "authz"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := hb.Bytes()
	var streamConns []net.Conn
	for c := 0; c < 10; c++ {
		conn, fr := h2conn(t, addr)
		waitPingAck(t, conn, fr) // the server's SETTINGS (stream limit) are in force
		for i := 0; i < perConn; i++ {
			if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: block, EndHeaders: true}); err != nil {
				t.Fatal(err)
			}
		}
		waitPingAck(t, conn, fr)
		streamConns = append(streamConns, conn)
	}
	afterStreams := heapInUse()
	mib := func(b uint64) float64 { return float64(b) / (1 << 20) }
	idleCost := afterIdle - min(afterIdle, base)
	streamCost := afterStreams - min(afterStreams, afterIdle)
	t.Logf("heap and stacks in use: base %.1f MiB; +1,000 idle connections %.1f MiB (%.1f KiB each); +10,000 half-open streams %.1f MiB (%.1f KiB each)",
		mib(base), mib(idleCost), float64(idleCost)/1000/1024, mib(streamCost), float64(streamCost)/10000/1024)
	if idleCost/1000 > 64<<10 || streamCost/10000 > 64<<10 {
		t.Fatalf("over 64 KiB per idle connection or half-open stream")
	}

	// Idle connections are closed by the server (MaxConnectionIdle): the
	// read ends with EOF (after a GOAWAY) instead of hanging forever.
	for _, c := range idle[:10] {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Fatalf("idle connection not closed by the server: %v", err)
		}
	}
	for _, c := range append(idle, streamConns...) {
		_ = c.Close()
	}
}
