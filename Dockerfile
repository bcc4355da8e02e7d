# The zeroscale images. With Docker (or any BuildKit / buildah builder) and network access:
#   docker build -t ghcr.io/zeroscale/zeroscale:0.1.0 .                          # the add-on
#   docker build --target sample-model -t ghcr.io/zeroscale/sample-model:0.1.0 .  # the example model
# The manifests run `/activator` or `/autoscaler` from the add-on image.
#
# Without a Docker engine, scripts/build-images.sh builds the same final stages with buildah from
# binaries compiled on the host: it passes `--build-arg BINARIES=local`, so the `build` stage
# (which needs the rust image from a registry) is skipped and `local` supplies /out instead. Every
# stage after `binaries` is shared, so what the tests run is what users get.
ARG BINARIES=build

# --- build: static (musl) release binaries, from source ---
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl && apt-get update \
    && apt-get install -y --no-install-recommends musl-tools && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
        -p zeroscale-activator -p zeroscale-autoscaler -p zeroscale-testkit \
        --bin activator --bin autoscaler --bin sample-model --bin zeroscale-pause \
    && mkdir /out && cp target/x86_64-unknown-linux-musl/release/activator \
        target/x86_64-unknown-linux-musl/release/autoscaler \
        target/x86_64-unknown-linux-musl/release/sample-model \
        target/x86_64-unknown-linux-musl/release/zeroscale-pause /out/ \
    && strip --strip-debug /out/*

# --- local: the same binaries, built on the host by scripts/build-images.sh (context: out/) ---
FROM scratch AS local
COPY out/ /out/

FROM ${BINARIES} AS binaries

# --- the files every image shares: a passwd/group entry for the non-root user (uid 65532, as in
# distroless' "nonroot"), so tools that look the user up find it. No CA bundle: nothing in these
# images dials a public TLS endpoint (the API server's CA comes from the ServiceAccount volume). ---
FROM scratch AS base
COPY images/passwd images/group /etc/
USER 65532:65532

# --- the pause (sandbox) image the test node uses, so no registry is needed: sleeps until SIGTERM ---
FROM base AS pause
COPY --from=binaries /out/zeroscale-pause /pause
ENTRYPOINT ["/pause"]

# --- the example model server (manifests/examples/model.yaml) ---
FROM base AS sample-model
COPY --from=binaries /out/sample-model /usr/local/bin/sample-model
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sample-model"]

# --- the add-on: both binaries in one image (the default target) ---
FROM base AS zeroscale
COPY --from=binaries /out/activator /out/autoscaler /
EXPOSE 8080 9090
ENTRYPOINT ["/activator"]
