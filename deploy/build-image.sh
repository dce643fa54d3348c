#!/usr/bin/env bash
# Builds Kiln's default build image without any container registry: a Debian bookworm root
# filesystem made by debootstrap from the host's configured Debian mirror, imported with
# `docker import`. Idempotent: does nothing when the image already exists (use --force to rebuild).
#
#   deploy/build-image.sh [--force] [TAG]      (default TAG: kiln/build-image:bookworm)
set -euo pipefail

force=0
if [ "${1:-}" = "--force" ]; then force=1; shift; fi
tag="${1:-kiln/build-image:bookworm}"

if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "image $tag already present"
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  else
    echo "error: debootstrap is not installed; install it (apt-get install debootstrap) and re-run" >&2
    exit 2
  fi
fi

# The mirror this host already uses (deb822 or one-line sources), so no other address is contacted.
mirror="${KILN_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(grep -hsE '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
fi
mirror="${mirror:-http://deb.debian.org/debian}"

root=$(mktemp -d /tmp/kiln-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

echo "debootstrap bookworm from $mirror into $root"
debootstrap --variant=minbase \
  --include=bash,dash,coreutils,git,curl,ca-certificates,tar,gzip,zip,unzip,procps,passwd,findutils,sed,grep \
  bookworm "$root" "$mirror" >/tmp/kiln-debootstrap.log 2>&1 || {
    echo "error: debootstrap failed; see /tmp/kiln-debootstrap.log" >&2
    tail -n 20 /tmp/kiln-debootstrap.log >&2
    exit 1
  }

chroot "$root" useradd --create-home --shell /bin/bash codebuild-user
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/tmp/* "$root"/var/log/*.log

tar --numeric-owner -C "$root" -c . | docker import \
  --change 'CMD ["/bin/bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
  --message "kiln default build image (debian bookworm)" - "$tag" >/dev/null
echo "built $tag"
