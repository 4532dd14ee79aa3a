# syntax=docker/dockerfile:1
# One image for all of Sluice's binaries (sluice-ingress, sluice-worker, sluice-analytics,
# mock-provider); docker-compose.yml picks the binary with `command:`.

# ---- build ----
FROM rust:1-bookworm AS build
WORKDIR /src
# rdkafka builds its bundled librdkafka with configure + make; the rust image (buildpack-deps)
# already has gcc, make, perl, zlib and OpenSSL headers (TLS to Kafka), so no extra packages.
COPY . .
# Cache mounts keep the registry and target dir between builds; the binaries are copied out
# of the (cached, hence not-in-image) target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && for b in sluice-ingress sluice-worker sluice-analytics mock-provider; do \
      cp "target/release/$b" /out/ || { echo "missing binary: $b" >&2; exit 1; }; \
    done

# ---- runtime ----
FROM debian:bookworm-slim
# ca-certificates: TLS to real model providers; curl: container health checks; libssl3:
# librdkafka's TLS to Kafka.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin sluice
COPY --from=build /out/ /usr/local/bin/
USER sluice
ENV RUST_LOG=info
# No ENTRYPOINT: compose (or `docker run`) names the binary.
CMD ["sluice-ingress", "--help"]
