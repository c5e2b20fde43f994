#!/usr/bin/env bash
# Checks what the runtime image promises. With a working container runtime
# (`docker info` answers), builds the Dockerfile and runs the binaries in the
# image as its non-root user. Without one, checks the binaries (built here)
# against the image's base: they may need only what distroless/cc-debian12
# has (glibc, libm, libgcc_s), and they run in a root filesystem that holds
# nothing else (chroot, as user 65532): --version, crypto (testpki), and the
# image's configuration refusing to start without the deployment's
# environment. Never skips silently.
# Usage: scripts/image_check.sh [BIN_DIR]      (default target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
bins=${1:-target/debug}
names="paynotify paynotify-ingest paynotify-worker paynotify-api"

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  echo "image_check.sh: building the image with docker"
  docker build -t paynotify:check .
  docker run --rm paynotify:check paynotify --version
  docker run --rm paynotify:check paynotify testpki --dir /tmp/pki >/dev/null
  out=$(docker run --rm paynotify:check 2>&1 || true)
  grep -q merchants <<<"$out" || { echo "image_check.sh: unexpected start: $out" >&2; exit 1; }
  docker image ls paynotify:check
  exit 0
fi
echo "image_check.sh: no container runtime answers (docker info); checking $bins in a minimal root filesystem instead"

allowed='linux-vdso\.so\.1|/lib64/ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1'
for b in $names; do
  extra=$(ldd "$bins/$b" | awk '{print $1}' | grep -Ev "^($allowed)$" || true)
  if [ -n "$extra" ]; then
    echo "image_check.sh: $b needs $extra, which distroless/cc-debian12 does not have" >&2
    exit 1
  fi
done

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
for lib in $(for b in $names; do ldd "$bins/$b"; done \
             | awk '/=>/ {print $3} /^[ \t]*\/lib64\// {print $1}' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
mkdir -p "$root/usr/local/bin" "$root/etc/paynotify" "$root/etc/ssl/certs" "$root/tmp"
chmod 1777 "$root/tmp"
for b in $names; do cp "$bins/$b" "$root/usr/local/bin/"; done
cp infra/docker/paynotify.toml "$root/etc/paynotify/paynotify.toml"
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
chmod -R a+rX "$root"
chmod 1777 "$root/tmp"

if [ "$(id -u)" = 0 ]; then
  run() { chroot --userspec=65532:65532 "$root" "$@"; }
elif unshare -r true 2>/dev/null; then
  run() { unshare -r chroot "$root" "$@"; }
else
  echo "image_check.sh: ************************************************************" >&2
  echo "image_check.sh: cannot chroot (not root, no user namespaces): the binaries'" >&2
  echo "image_check.sh: libraries were checked, but they were NOT run in a minimal root." >&2
  echo "image_check.sh: ************************************************************" >&2
  exit 0
fi
echo "   $(find "$root" -type f | wc -l) files in the root filesystem: $(ls "$root"/lib/x86_64-linux-gnu 2>/dev/null | tr '\n' ' ')"
run /usr/local/bin/paynotify --version
run /usr/local/bin/paynotify testpki --dir /tmp/pki >/dev/null
test -s "$root/tmp/pki/root.pem"
for b in paynotify-ingest paynotify-worker paynotify-api; do
  if out=$(run "/usr/local/bin/$b" --config /etc/paynotify/paynotify.toml 2>&1); then
    echo "image_check.sh: $b started without the deployment's environment" >&2
    exit 1
  fi
  grep -q merchants <<<"$out" || { echo "image_check.sh: $b failed otherwise: $out" >&2; exit 1; }
done
echo "image_check.sh: the binaries run in a root filesystem with only glibc, libm, libgcc_s and CA certificates, as user 65532"
