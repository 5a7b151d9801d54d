#!/usr/bin/env bash
# Builds the Tollgate node image on an engine that can pull nothing: `tollgate` is compiled
# with a static glibc, staged under target/image/ with the few files a scratch image needs,
# and wrapped by the Dockerfile at the root (FROM scratch). Needs only cargo and docker.
#
#   scripts/build-image.sh                 # builds tollgate:local
#   TOLLGATE_IMAGE=tollgate:1.2 scripts/build-image.sh
#
# TOLLGATE_IMAGE_BUILD_ALSO names more packages and binaries for the same cargo invocation
# (tests/compose/run.sh adds its load client): one invocation resolves features once, so the
# shared crates compile once.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${TOLLGATE_IMAGE:-tollgate:local}"
target_triple="x86_64-unknown-linux-gnu"
# A target dir of its own: the static build shares nothing with the ordinary debug and
# release builds, and so never waits for their lock (or they for its).
target_dir="target/image-build"
# The one unprivileged user the node runs as (the distroless "nonroot" ids).
user_id=65532

for tool in cargo docker; do
  command -v "$tool" >/dev/null || { echo "build-image: $tool is not installed" >&2; exit 1; }
done

read -r -a build_also <<<"${TOLLGATE_IMAGE_BUILD_ALSO:-}"

echo "== static build of tollgate ($target_triple, release)"
# --target is required: without it RUSTFLAGS would reach proc-macro crates too, which
# cannot link statically. It also keeps this build apart from the ordinary target/release.
# No debug info and stripped symbols: the image carries only what runs.
RUSTFLAGS='-C target-feature=+crt-static' \
  CARGO_PROFILE_RELEASE_DEBUG=0 \
  CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --release --locked --target "$target_triple" --target-dir "$target_dir" \
  -p tollgate-server --bin tollgate "${build_also[@]}"

binary="$target_dir/$target_triple/release/tollgate"
# A static(-pie) binary names no shared library to load.
if ldd "$binary" 2>&1 | grep -q '=>'; then
  echo "build-image: $binary is dynamically linked; a scratch image cannot run it" >&2
  exit 1
fi

echo "== staging target/image"
stage="target/image"
rm -rf "$stage"
mkdir -p "$stage/rootfs/etc" "$stage/rootfs/usr/local/bin" "$stage/data"
install -m 0755 "$binary" "$stage/rootfs/usr/local/bin/tollgate"
printf 'root:x:0:0:root:/:/sbin/nologin\ntollgate:x:%d:%d:Tollgate node:/var/lib/tollgate:/sbin/nologin\n' \
  "$user_id" "$user_id" >"$stage/rootfs/etc/passwd"
printf 'root:x:0:\ntollgate:x:%d:\n' "$user_id" >"$stage/rootfs/etc/group"
chmod 0644 "$stage/rootfs/etc/passwd" "$stage/rootfs/etc/group"

echo "== docker build -t $image"
docker build --quiet --tag "$image" --file Dockerfile .
size_bytes="$(docker image inspect --format '{{.Size}}' "$image")"
echo "built $image ($((size_bytes / 1024 / 1024)) MiB)"
