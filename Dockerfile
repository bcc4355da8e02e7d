# Multi-stage build of both zeroscale binaries into one minimal, non-root image.
#   docker build -t ghcr.io/zeroscale/zeroscale:0.1.0 .
# The manifests run `/activator` or `/autoscaler` from it.
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
        -p zeroscale-activator -p zeroscale-autoscaler \
    && cp target/x86_64-unknown-linux-musl/release/activator /activator \
    && cp target/x86_64-unknown-linux-musl/release/autoscaler /autoscaler

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /activator /autoscaler /
USER 65532:65532
ENTRYPOINT ["/activator"]
