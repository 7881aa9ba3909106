// Package grpcrecover turns a panic in a gRPC handler into an Internal
// error for that call, logged with its stack, instead of a crash of the
// whole server. grpc-go does not recover handler panics itself.
package grpcrecover

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Recoverer builds the interceptors and counts recovered panics.
type Recoverer struct {
	log    *slog.Logger
	panics prometheus.Counter
}

// New returns a Recoverer; reg may be nil.
func New(log *slog.Logger, reg prometheus.Registerer) (*Recoverer, error) {
	if log == nil {
		log = slog.Default()
	}
	r := &Recoverer{log: log, panics: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mandate_grpc_panics_total",
		Help: "Panics in gRPC handlers, each answered with an Internal error.",
	})}
	if reg != nil {
		if err := reg.Register(r.panics); err != nil {
			return nil, fmt.Errorf("grpcrecover: registering metrics: %w", err)
		}
	}
	return r, nil
}

func (r *Recoverer) recovered(method string, p any) error {
	r.panics.Inc()
	r.log.Error("panic in gRPC handler", "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	// The client learns nothing of the panic's content.
	return status.Error(codes.Internal, "internal error")
}

// Unary recovers unary handlers.
func (r *Recoverer) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if p := recover(); p != nil {
				resp, err = nil, r.recovered(info.FullMethod, p)
			}
		}()
		return h(ctx, req)
	}
}

// Stream recovers stream handlers.
func (r *Recoverer) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = r.recovered(info.FullMethod, p)
			}
		}()
		return h(srv, ss)
	}
}
