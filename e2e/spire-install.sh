#!/usr/bin/env bash
# spire-install.sh: make sure the SPIRE server and agent binaries used by the
# end-to-end suite exist in ${MANDATE_SPIRE_CACHE:-$HOME/.cache/mandate/spire}/<version>/.
#
# Idempotent: when both binaries are already there it only says so. Otherwise it
# builds them from the SPIRE Go module (fetched through the Go module proxy) into
# a temporary directory and renames that directory into place only after a
# complete, successful build, so a half-built directory is never used.
set -euo pipefail

SPIRE_VERSION="${MANDATE_SPIRE_VERSION:-v1.13.3}"
CACHE="${MANDATE_SPIRE_CACHE:-$HOME/.cache/mandate/spire}"
DEST="$CACHE/$SPIRE_VERSION"

log() { printf 'spire-install: %s\n' "$*" >&2; }

have_binaries() {
	[[ -x "$1/spire-server" && -x "$1/spire-agent" ]]
}

if have_binaries "$DEST"; then
	log "SPIRE $SPIRE_VERSION already installed in $DEST"
	exit 0
fi

command -v go >/dev/null 2>&1 || { log "go is not on PATH"; exit 1; }

mkdir -p "$CACHE"
# A lock so two concurrent runs (CI jobs sharing a cache) do not build twice.
exec 9>"$CACHE/.install-$SPIRE_VERSION.lock"
if command -v flock >/dev/null 2>&1; then
	log "taking the install lock"
	flock 9
	if have_binaries "$DEST"; then
		log "SPIRE $SPIRE_VERSION was installed by a concurrent run in $DEST"
		exit 0
	fi
fi

TMP="$(mktemp -d "$CACHE/.$SPIRE_VERSION.build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

log "downloading github.com/spiffe/spire@$SPIRE_VERSION through the Go module proxy"
# Run outside any module so the download does not touch a go.mod.
MODDIR="$(cd "$TMP" && GOFLAGS=-mod=mod go mod download -json "github.com/spiffe/spire@$SPIRE_VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
if [[ -z "$MODDIR" || ! -d "$MODDIR" ]]; then
	log "could not locate the downloaded module directory"
	exit 1
fi
log "module in $MODDIR"

log "building spire-server and spire-agent (several minutes on a cold build cache)"
start=$(date +%s)
(cd "$MODDIR" && GOFLAGS=-mod=mod go build -o "$TMP/" ./cmd/spire-server ./cmd/spire-agent)
log "built in $(($(date +%s) - start))s"

if ! have_binaries "$TMP"; then
	log "build finished without both binaries"
	exit 1
fi
"$TMP/spire-server" --version >/dev/null 2>&1 || true

if [[ -e "$DEST" ]]; then
	# An incomplete leftover (no lock available, or a manual copy): replace it.
	rm -rf "$DEST"
fi
chmod 755 "$TMP"
mv "$TMP" "$DEST"
trap - EXIT
log "installed SPIRE $SPIRE_VERSION in $DEST"
