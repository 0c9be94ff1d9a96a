#!/usr/bin/env bash
# Installs Debian's aarch64 cross compiler and qemu's user-mode emulator, for the aarch64 checks of
# the CPU code (tests/kernels/test_aarch64_build.py). Needs root and apt.
# Usage: scripts/install_aarch64_cross.sh   (idempotent: does nothing when already installed)
set -euo pipefail
if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "cannot install the aarch64 cross compiler: needs root and apt-get" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends g++-aarch64-linux-gnu qemu-user >&2
