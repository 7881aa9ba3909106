package deps

import (
	_ "cel.dev/cel-go/cel"
	_ "github.com/dgraph-io/ristretto/v2"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	_ "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	_ "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	_ "github.com/fsnotify/fsnotify"
	_ "github.com/go-jose/go-jose/v4"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/spiffe/go-spiffe/v2/spiffeid"
	_ "github.com/spiffe/go-spiffe/v2/workloadapi"
	_ "go.etcd.io/bbolt"
	_ "google.golang.org/grpc"
	_ "istio.io/api/security/v1beta1"
	_ "sigs.k8s.io/yaml"
)
