package authz

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	// Registers the "proto" codec this one wraps.
	_ "google.golang.org/grpc/encoding/proto"
)

// DefaultMaxRequestBytes is the largest CheckRequest decided when
// CodecConfig.MaxRequestBytes is zero.
const DefaultMaxRequestBytes = 1 << 20

// Codec is the gRPC codec of the Check server (install it with
// grpc.ForceServerCodecV2). A CheckRequest that does not decode (invalid
// UTF-8 in a string field, a truncated message) or is larger than the
// limit is not an RPC error, which Envoy would turn into status_on_error
// or, with failure_mode_allow, into a pass: it reaches Check empty and
// marked, and Check denies it (bad_request). Other messages (health,
// reflection) are decoded as the standard proto codec does.
//
// The mark is an unknown field holding a random per-process value, which
// no client can forge.
type Codec struct {
	base  encoding.CodecV2
	limit int
	mark  []byte
}

// NewCodec returns a Codec denying CheckRequests over maxRequestBytes
// (zero: DefaultMaxRequestBytes). Set grpc.MaxRecvMsgSize above it (the
// transport's own cap, answered with an RPC error).
func NewCodec(maxRequestBytes int) (*Codec, error) {
	if maxRequestBytes < 0 {
		return nil, fmt.Errorf("authz: codec: negative max request bytes %d", maxRequestBytes)
	}
	if maxRequestBytes == 0 {
		maxRequestBytes = DefaultMaxRequestBytes
	}
	base := encoding.GetCodecV2("proto")
	if base == nil {
		return nil, errors.New("authz: codec: no proto codec registered")
	}
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return nil, fmt.Errorf("authz: codec: %w", err)
	}
	mark := protowire.AppendTag(nil, protowire.MaxValidNumber, protowire.BytesType)
	mark = protowire.AppendBytes(mark, secret)
	return &Codec{base: base, limit: maxRequestBytes, mark: mark}, nil
}

// Name implements encoding.CodecV2: it replaces the "proto" codec.
func (c *Codec) Name() string { return c.base.Name() }

// Marshal implements encoding.CodecV2.
func (c *Codec) Marshal(v any) (mem.BufferSlice, error) { return c.base.Marshal(v) }

// Unmarshal implements encoding.CodecV2.
func (c *Codec) Unmarshal(data mem.BufferSlice, v any) error {
	req, ok := v.(*authv3.CheckRequest)
	if !ok {
		return c.base.Unmarshal(data, v)
	}
	if data.Len() > c.limit {
		c.setMark(req)
		return nil
	}
	if err := c.base.Unmarshal(data, v); err != nil {
		c.setMark(req)
		return nil
	}
	return nil
}

func (c *Codec) setMark(req *authv3.CheckRequest) {
	proto.Reset(req)
	req.ProtoReflect().SetUnknown(c.mark)
}

// undecodable reports whether req is the mark of a request that did not
// decode or was too large.
func (c *Codec) undecodable(req *authv3.CheckRequest) bool {
	if c == nil {
		return false
	}
	u := req.ProtoReflect().GetUnknown()
	return len(u) > 0 && bytes.Equal(u, c.mark)
}
