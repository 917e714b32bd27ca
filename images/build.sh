#!/usr/bin/env bash
# Builds the drover-operator and drover-worker images without a container
# engine: cargo builds the binaries here, images/rootfs.sh lays out each
# root filesystem, and buildah (Debian's package) commits it FROM scratch,
# checks that the binary starts inside the image (`buildah run --isolation
# chroot`, so no user namespaces are needed), and writes an OCI archive.
#   images/build.sh [--debug] [TAG]
# TAG defaults to the workspace version (the chart's appVersion). Archives go
# to target/images/drover-{operator,worker}-TAG.oci.tar; load them with
# `skopeo copy oci-archive:FILE docker://REGISTRY/drover-operator:TAG` or
# `podman load -i FILE`. The kubectl plugin is no image: its binary goes to
# target/images/kubectl-drover-TAG, for users' PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=release
if [ "${1:-}" = "--debug" ]; then
    profile=debug
    shift
fi
tag=${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}
command -v buildah >/dev/null || {
    echo "buildah not found: apt-get install -y buildah" >&2
    exit 1
}

if [ "$profile" = release ]; then
    cargo build --release --locked -p drover-operator -p drover-worker -p drover-cli
else
    cargo build --locked -p drover-operator -p drover-worker -p drover-cli
fi

mkdir -p target/images
cp "target/$profile/kubectl-drover" "target/images/kubectl-drover-$tag"
"target/images/kubectl-drover-$tag" --version
echo "kubectl-drover -> target/images/kubectl-drover-$tag"
for name in drover-operator drover-worker; do
    rootfs=$(mktemp -d)
    trap 'rm -rf "$rootfs"' EXIT
    images/rootfs.sh "target/$profile/$name" "$rootfs"
    container=$(buildah from --quiet scratch)
    buildah copy --quiet "$container" "$rootfs/" / >/dev/null
    buildah config --user 65532:65532 --entrypoint "[\"/usr/local/bin/$name\"]" --cmd '' \
        --label org.opencontainers.image.title="$name" \
        --label org.opencontainers.image.version="$tag" "$container"
    # The image's own libraries are enough for the binary to start.
    buildah run --isolation chroot "$container" -- "/usr/local/bin/$name" --version
    buildah commit --quiet --rm "$container" "$name:$tag" >/dev/null
    archive="target/images/$name-$tag.oci.tar"
    rm -f "$archive"
    buildah push --quiet "$name:$tag" "oci-archive:$archive:$name:$tag"
    echo "$name:$tag -> $archive ($(du -h "$archive" | cut -f1))"
    rm -rf "$rootfs"
    trap - EXIT
done
