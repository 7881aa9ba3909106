#!/usr/bin/env bash
# etcd-install.sh: make sure the etcd member binary used by the etcd tests
# exists in ${MANDATE_ETCD_CACHE:-$HOME/.cache/mandate/etcd}/<version>-<hash>/etcdserver
# and print its path on stdout.
#
# The binary is e2e/etcdserver (etcd's embed package, pinned in that nested
# module's go.mod), built through the Go module proxy. The cache key holds
# the etcd version and a hash of the nested module's sources, so a change
# to them builds a new binary. Idempotent: when the binary is there it only
# prints its path; with MANDATE_ETCD_NO_BUILD set it exits 3 instead of
# building (how the tests find the binary). The build goes to a temporary directory renamed into
# place only once complete, under a lock, like spire-install.sh.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$HERE/etcdserver"
VERSION="$(sed -n 's/^require go.etcd.io\/etcd\/server\/v3 \(v[0-9.]*\)$/\1/p' "$SRC/go.mod")"
[[ -n "$VERSION" ]] || { echo "etcd-install: no etcd server version in $SRC/go.mod" >&2; exit 1; }
HASH="$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC"/*.go | sha256sum | cut -c1-12)"
CACHE="${MANDATE_ETCD_CACHE:-$HOME/.cache/mandate/etcd}"
DEST="$CACHE/$VERSION-$HASH"

log() { printf 'etcd-install: %s\n' "$*" >&2; }

if [[ -x "$DEST/etcdserver" ]]; then
	log "etcd $VERSION already installed in $DEST"
	echo "$DEST/etcdserver"
	exit 0
fi
if [[ -n "${MANDATE_ETCD_NO_BUILD:-}" ]]; then
	log "etcd $VERSION is not installed in $DEST (run e2e/etcd-install.sh)"
	exit 3
fi
command -v go >/dev/null 2>&1 || { log "go is not on PATH"; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.install-$VERSION-$HASH.lock"
if command -v flock >/dev/null 2>&1; then
	flock 9
	if [[ -x "$DEST/etcdserver" ]]; then
		log "etcd $VERSION was installed by a concurrent run in $DEST"
		echo "$DEST/etcdserver"
		exit 0
	fi
fi

TMP="$(mktemp -d "$CACHE/.$VERSION.build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
log "building etcd $VERSION (e2e/etcdserver) through the Go module proxy"
start=$(date +%s)
(cd "$SRC" && GOFLAGS=-mod=readonly GOWORK=off go build -trimpath -o "$TMP/etcdserver" .)
log "built in $(($(date +%s) - start))s"
[[ -x "$TMP/etcdserver" ]] || { log "build finished without a binary"; exit 1; }
rm -rf "$DEST"
chmod 755 "$TMP"
mv "$TMP" "$DEST"
trap - EXIT
log "installed etcd $VERSION in $DEST"
echo "$DEST/etcdserver"
