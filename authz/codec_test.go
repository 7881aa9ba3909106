package authz

import (
	"context"
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// rawCodec sends bytes as they are, as a hostile client can.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}
func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}

// TestUndecodableRequestIsADeny sends CheckRequests that do not decode or
// are too large as raw bytes over a real gRPC server: each is answered RPC
// OK with a deny (bad_request), never a gRPC error.
func TestUndecodableRequestIsADeny(t *testing.T) {
	codec, err := NewCodec(64 << 10)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, func(c *Config) { c.Codec = codec })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.ForceServerCodecV2(codec), grpc.MaxRecvMsgSize(1<<20))
	authv3.RegisterAuthorizationServer(gs, h.srv)
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	good, err := proto.Marshal(checkReq("GET", "/queue"))
	if err != nil {
		t.Fatal(err)
	}
	// attributes(1) { source(1) { principal(5): invalid UTF-8 } }
	peer := protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), []byte("spiffe://example.org/\xff\xfe"))
	src := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), peer)
	badUTF8 := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), src)
	big := append([]byte(nil), good...)
	big = protowire.AppendTag(big, 1, protowire.BytesType) // merges into attributes
	big = protowire.AppendBytes(big, protowire.AppendBytes(protowire.AppendTag(nil, 10, protowire.BytesType),
		[]byte(strings.Repeat("x", 100<<10))))

	call := func(raw []byte) (*authv3.CheckResponse, error) {
		resp := new(authv3.CheckResponse)
		err := conn.Invoke(ctx, "/envoy.service.auth.v3.Authorization/Check", &raw, resp, grpc.ForceCodecV2(rawCodec{}))
		return resp, err
	}
	if resp, err := call(good); err != nil || resp.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("a good request sent raw: %v %v", resp, err)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
	}{
		{"invalid UTF-8 in a string field", badUTF8},
		{"truncated message", good[:len(good)-3]},
		{"bad tag", []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"over the configured limit", big},
	} {
		resp, err := call(tc.raw)
		if err != nil {
			t.Errorf("%s: RPC error %v (Envoy would answer status_on_error, or pass with failure_mode_allow)", tc.name, err)
			continue
		}
		if resp.GetStatus().GetCode() != int32(codes.PermissionDenied) {
			t.Errorf("%s: status %v, want PERMISSION_DENIED", tc.name, resp.GetStatus())
			continue
		}
		var body struct{ Reason string }
		if err := json.Unmarshal([]byte(resp.GetDeniedResponse().GetBody()), &body); err != nil || body.Reason != "bad_request" {
			t.Errorf("%s: deny body %q, want reason bad_request", tc.name, resp.GetDeniedResponse().GetBody())
		}
	}
	// A client cannot forge the mark: an unknown field at the same number
	// is just an unknown field of a decodable request.
	forged := protowire.AppendBytes(protowire.AppendTag(append([]byte(nil), good...), protowire.MaxValidNumber, protowire.BytesType), make([]byte, 16))
	if resp, err := call(forged); err != nil || resp.GetStatus().GetCode() != int32(codes.OK) {
		t.Fatalf("a request with an unknown field: %v %v", resp, err)
	}
}
