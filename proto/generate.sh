#!/usr/bin/env bash
# Regenerates the Go code for proto/mandate/v1/*.proto into xds/mandatev1:
# messages (*.pb.go) and gRPC services (*_grpc.pb.go).
#
# Tools: protoc from Debian (apt-get install -y protobuf-compiler, which also
# ships the google/protobuf/*.proto includes); protoc-gen-go from the Go
# module proxy at the version go.mod requires for google.golang.org/protobuf;
# protoc-gen-go-grpc from the Go module proxy at the version pinned below.
# xds/mandatev1/generate_test.go reads that pin and checks the committed
# files against a fresh run.
#
# Usage: proto/generate.sh            (from anywhere inside the module)
#        INSTALL=1 proto/generate.sh  (install missing tools first)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

pbver="$(go list -m -f '{{.Version}}' google.golang.org/protobuf)"
# The generated *_grpc.pb.go need grpc.SupportPackageIsVersion9, i.e.
# google.golang.org/grpc >= v1.64.0; go.mod requires v1.85.0. Raise this pin
# only to a release whose generated code the go.mod grpc version supports.
grpcgenver=v1.6.2
bin="$root/.cache/protobin"
mkdir -p "$bin"

if ! command -v protoc >/dev/null 2>&1; then
	if [[ "${INSTALL:-}" == 1 ]]; then
		apt-get update && apt-get install -y protobuf-compiler
	else
		echo "generate.sh: protoc not found (apt-get install -y protobuf-compiler, or INSTALL=1)" >&2
		exit 1
	fi
fi

if [[ ! -x "$bin/protoc-gen-go" ]] || [[ "$("$bin/protoc-gen-go" --version)" != "protoc-gen-go $pbver" ]]; then
	GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$pbver"
fi
if [[ ! -x "$bin/protoc-gen-go-grpc" ]] || [[ "$("$bin/protoc-gen-go-grpc" --version)" != "protoc-gen-go-grpc ${grpcgenver#v}" ]]; then
	GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$grpcgenver"
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

PATH="$bin:$PATH" protoc \
	--proto_path=proto \
	--go_out="$out" \
	--go_opt=module=github.com/mandate-dev/mandate \
	--go-grpc_out="$out" \
	--go-grpc_opt=module=github.com/mandate-dev/mandate \
	proto/mandate/v1/*.proto

# Only the generated files are replaced; hand-written files stay.
rm -f xds/mandatev1/*.pb.go
cp "$out"/xds/mandatev1/*.pb.go xds/mandatev1/
echo "generate.sh: wrote $(ls "$out"/xds/mandatev1/*.pb.go | wc -l) file(s) into xds/mandatev1 (protoc-gen-go $pbver, protoc-gen-go-grpc $grpcgenver, $(protoc --version))"
