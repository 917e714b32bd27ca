# drover-worker: a release build on Debian, then an image FROM scratch with only
# the binary, the libraries it links, the CA bundle and a non-root user.
# Build from the repository root (the context is the workspace):
#   docker build -f images/worker.Dockerfile -t drover-worker:0.1.0 .
# images/build.sh makes the same image with buildah, without a container engine.

FROM rust:1.91-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p drover-worker

FROM debian:bookworm-slim AS rootfs
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/drover-worker /drover-worker
COPY images/rootfs.sh /rootfs.sh
RUN /rootfs.sh /drover-worker /out

FROM scratch
COPY --from=rootfs /out/ /
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/drover-worker"]
