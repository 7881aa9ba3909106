package main

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/bojand/ghz/runner"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/jhump/protoreflect/desc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
)

const checkMethod = "envoy.service.auth.v3.Authorization.Check"

// protoset returns the serialized FileDescriptorSet of the ext_authz v3
// service and everything it imports, from the descriptors compiled into
// go-control-plane, so ghz needs neither .proto files nor reflection.
func protoset() ([]byte, error) {
	set := &descriptorpb.FileDescriptorSet{}
	seen := map[string]bool{}
	var add func(fd protoreflect.FileDescriptor)
	add = func(fd protoreflect.FileDescriptor) {
		if seen[fd.Path()] {
			return
		}
		seen[fd.Path()] = true
		imports := fd.Imports()
		for i := 0; i < imports.Len(); i++ {
			add(imports.Get(i).FileDescriptor)
		}
		set.File = append(set.File, protodesc.ToFileDescriptorProto(fd))
	}
	add(authv3.File_envoy_service_auth_v3_external_auth_proto)
	b, err := proto.Marshal(set)
	if err != nil {
		return nil, fmt.Errorf("bench: protoset: %w", err)
	}
	return b, nil
}

// loadSpec is one ghz run.
type loadSpec struct {
	addr        string
	duration    time.Duration
	concurrency uint
	rps         uint // 0: as fast as possible
	work        workload
}

// loadResult is what the client saw.
type loadResult struct {
	count          uint64
	rps            float64
	p50, p99, p999 time.Duration
	errors         int
	errorDist      map[string]int
	statusCodeDist map[string]int
	elapsed        time.Duration
}

func runLoad(set []byte, s loadSpec) (*loadResult, error) {
	opts := []runner.Option{
		runner.WithProtosetBinary(set),
		runner.WithInsecure(true),
		runner.WithConcurrency(s.concurrency),
		runner.WithRunDuration(s.duration),
		runner.WithDurationStopAction("wait"),
		runner.WithTimeout(5 * time.Second),
		runner.WithDialTimeout(5 * time.Second),
		runner.WithBinaryDataFunc(func(*desc.MethodDescriptor, *runner.CallData) []byte { return s.work.next() }),
		runner.WithSkipFirst(0),
	}
	if s.rps > 0 {
		opts = append(opts, runner.WithRPS(s.rps))
	}
	rep, err := runner.Run(checkMethod, s.addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("bench: ghz: %w", err)
	}
	r := &loadResult{
		count: rep.Count, rps: rep.Rps, errorDist: rep.ErrorDist,
		statusCodeDist: rep.StatusCodeDist, elapsed: rep.Total,
	}
	// Every call that did not end with gRPC status OK is an error
	// (denials are answered with status OK and a denied HTTP response).
	r.errors = int(rep.Count) - rep.StatusCodeDist["OK"]
	lat := make([]time.Duration, 0, len(rep.Details))
	for _, d := range rep.Details {
		if d.Error == "" {
			lat = append(lat, d.Latency)
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r.p50, r.p99, r.p999 = percentile(lat, 0.50), percentile(lat, 0.99), percentile(lat, 0.999)
	return r, nil
}

// percentile returns the nearest-rank percentile q (0..1] of sorted.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q*float64(len(sorted)))) - 1
	if rank < 0 {
		rank = 0
	}
	if rank >= len(sorted) {
		rank = len(sorted) - 1
	}
	return sorted[rank]
}
