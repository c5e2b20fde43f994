# syntax=docker/dockerfile:1
# The paynotify image: paynotify, paynotify-ingest, paynotify-worker and paynotify-api on
# distroless/cc (glibc, libgcc, CA certificates, no shell, no package
# manager), run as the non-root user 65532. The debug info is split off into
# its own stage. From the repository root:
#   docker build --platform linux/amd64 -t paynotify:0.1.0 .            # the runtime image
#   docker build --platform linux/amd64 --target debug -o debug-info .  # the .debug files
# (linux/amd64: the stacks' tasks are X86_64.) scripts/dockerfile_check.sh
# runs this file's build command and checks what the runtime stage copies.
# The image's configuration is infra/docker/paynotify.toml; the deployment
# completes it with PAYNOTIFY__… environment variables (docs/deploy.md).

# The build starts from a bare Debian, installing only what a fresh machine
# needs to build paynotify (README, "Two commands").
FROM debian:bookworm-slim AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's security updates replace these versions: pinning them would break
# the build, not make it reproducible (the Rust toolchain below is pinned).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev binutils \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
  | sh -s -- -y --profile minimal --default-toolchain 1.95.0
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p paynotify --bins \
 && mkdir -p /out/bin /out/debug \
 && for b in paynotify paynotify-ingest paynotify-worker paynotify-api; do \
      objcopy --only-keep-debug "target/release/$b" "/out/debug/$b.debug" \
      && objcopy --strip-debug --strip-unneeded --add-gnu-debuglink="/out/debug/$b.debug" \
           "target/release/$b" "/out/bin/$b"; \
    done

FROM scratch AS debug
COPY --from=build /out/debug/ /

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/bin/ /usr/local/bin/
COPY infra/docker/paynotify.toml /etc/paynotify/paynotify.toml
USER 65532:65532
EXPOSE 8080 8082 9090 9091 9092
CMD ["paynotify-ingest", "--config", "/etc/paynotify/paynotify.toml"]
