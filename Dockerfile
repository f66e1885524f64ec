# syntax=docker/dockerfile:1
# The waypoint's container image: the release build of the `waypoint` binary on a minimal runtime,
# run as uid/gid 1337 (Istio's proxy user), as charts/waypoint expects.
#
#   docker build -t <registry>/rust-waypoint:<version> .
#   docker push <registry>/rust-waypoint:<version>
#
# <version> is the crate's (and the chart's appVersion); docs/deploy.md has the whole walk-through.

# Debian 12 in both stages: the binary links against the builder's glibc, so the runtime's must be
# the same or newer.
ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
# pingora-core builds zlib-ng (libz-ng-sys) with cmake; ring and zlib-ng need a C compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake gcc libc6-dev make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out of
# the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p waypoint \
 && install -m 0755 target/release/waypoint /usr/local/bin/waypoint

# glibc, libgcc and CA certificates (JWKS over HTTPS uses the system roots), nothing else: no
# shell, no package manager.
FROM gcr.io/distroless/cc-debian12
COPY --from=build /usr/local/bin/waypoint /usr/local/bin/waypoint
USER 1337:1337
# HBONE, metrics (/metrics), readiness (/healthz/ready).
EXPOSE 15008 15020 15021
ENTRYPOINT ["/usr/local/bin/waypoint"]
CMD ["run", "--kubernetes"]
