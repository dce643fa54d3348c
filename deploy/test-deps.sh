#!/usr/bin/env bash
# Installs what the tests need besides Rust and a running Docker daemon: redis-server (the Redis
# state store and cluster tests start their own), Python's grpcio for the interoperability client,
# s3s-fs (an S3-compatible server) and the default build image. Safe to re-run; does nothing
# that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

# The Python test runs the `python3` on PATH: install the client's pinned packages into it.
if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
  PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
    python3 -m pip install -q -r tests/python/requirements.txt
fi

# The S3-compatible server the blob store's suite runs against (none is in Debian's archive):
# s3s-fs from crates.io, built once into ~/.cargo/bin (a few minutes; kept between runs).
if ! command -v s3s-fs >/dev/null && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  cargo install s3s-fs --version 0.14.1 --features binary --locked
fi

deploy/build-image.sh
