#!/usr/bin/env bash
# Lays out the root filesystem of a minimal image for one Drover binary:
# the binary, the shared libraries it links (as ldd lists them, with the
# dynamic loader), the CA bundle (Pub/Sub and the apiserver are reached over
# TLS with the system's roots), a non-root user 65532 and a writable /tmp.
# Used by both Dockerfiles and by images/build.sh.
#   images/rootfs.sh BINARY OUT_DIR
set -euo pipefail
binary=$1
out=$2
name=$(basename "$binary")

mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/tmp"
chmod 1777 "$out/tmp"
cp "$binary" "$out/usr/local/bin/$name"

# `ldd` prints "libx.so => /path (addr)" and the loader as "/lib64/ld-... (addr)".
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u |
    while read -r lib; do
        mkdir -p "$out$(dirname "$lib")"
        cp -L "$lib" "$out$lib"
    done

cp -L /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$out/etc/group"
mkdir -p "$out/home/nonroot"
chown 65532:65532 "$out/home/nonroot" 2>/dev/null || true
