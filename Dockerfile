# warden, all in one: one container that supervises what used to be a fleet
# of small worker containers.
#
#   docker build -t warden .
#   docker run --rm -p 9464:9464 -e WARDEN_API_LISTEN=0.0.0.0:9464 \
#       -e WARDEN_API_TOKEN=change-me \
#       -v "$PWD/services.toml:/etc/warden/services.toml:ro" warden
#
# The registry is /etc/warden/services.toml (WARDEN_CONFIG): the image bakes
# in deploy/services.toml, which runs the API alone; mount your own over it.
#
# Build arguments:
#   RUST_IMAGE    the build stage's image (a Rust toolchain on Debian bookworm)
#   DEBIAN_IMAGE  the runtime stage's image (Debian bookworm, slim)
#
# A binary built elsewhere: put it at prebuilt/warden in the build context
# (e.g. `cargo build --release && mkdir -p prebuilt && cp target/release/warden
# prebuilt/`) and the build stage takes it as it is instead of compiling;
# any bookworm image then does for RUST_IMAGE (scripts/container-test builds
# so, offline).

ARG RUST_IMAGE=docker.io/library/rust:1-slim-bookworm
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim

# ---- build: compile warden (or take prebuilt/warden) ---------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# .dockerignore lets in only Cargo.toml, Cargo.lock, src/, the default
# registry and prebuilt/.
COPY . .
RUN if [ -e prebuilt/warden ]; then \
        echo "taking prebuilt/warden as it is (delete it to build from source)"; \
        install -D -m 0755 prebuilt/warden /out/warden; \
    else \
        cargo build --release --locked --bin warden \
        && install -D -m 0755 target/release/warden /out/warden; \
    fi

# ---- runtime: slim Debian, warden as PID 1 --------------------------------
FROM ${DEBIAN_IMAGE} AS runtime
# What the built-in kinds need besides the C library: the system's CA
# roots for TLS to PostgreSQL, Redis and HTTP backends (sslmode=verify-full,
# rediss://, https://). Installed only when the base lacks it.
RUN if [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 10001 warden \
    && useradd --uid 10001 --gid warden --home-dir /var/lib/warden \
        --no-create-home --no-log-init --shell /usr/sbin/nologin warden \
    && install -d -o warden -g warden -m 0750 /var/lib/warden \
    && install -d -m 0755 /etc/warden
COPY --from=build /out/warden /usr/local/bin/warden
COPY deploy/services.toml /etc/warden/services.toml
ENV WARDEN_CONFIG=/etc/warden/services.toml
WORKDIR /var/lib/warden
# Not root by default. Services with `user =` need root: run the container
# with `--user root` (and keep its capabilities few) for those.
USER warden
EXPOSE 9464
# SIGTERM starts the ordered stop; give the engine more time than
# [warden] shutdown_timeout (docker stop -t 40, compose stop_grace_period).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/warden", "health"]
ENTRYPOINT ["/usr/local/bin/warden", "run"]
