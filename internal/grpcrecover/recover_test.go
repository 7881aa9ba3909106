package grpcrecover

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestUnaryPanicBecomesInternal(t *testing.T) {
	r, err := New(slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	info := &grpc.UnaryServerInfo{FullMethod: "/x.Y/Z"}
	_, err = r.Unary()(context.Background(), nil, info, func(context.Context, any) (any, error) {
		panic("secret detail")
	})
	if status.Code(err) != codes.Internal || strings.Contains(err.Error(), "secret") {
		t.Fatalf("err = %v, want Internal without the panic's content", err)
	}
	if testutil.ToFloat64(r.panics) != 1 {
		t.Fatal("panic not counted")
	}
	resp, err := r.Unary()(context.Background(), nil, info, func(context.Context, any) (any, error) { return "ok", nil })
	if err != nil || resp != "ok" {
		t.Fatalf("normal call: %v %v", resp, err)
	}
}

func TestStreamPanicBecomesInternal(t *testing.T) {
	r, err := New(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Stream()(nil, nil, &grpc.StreamServerInfo{FullMethod: "/x.Y/S"}, func(any, grpc.ServerStream) error { panic(1) })
	if status.Code(err) != codes.Internal {
		t.Fatalf("err = %v", err)
	}
}
