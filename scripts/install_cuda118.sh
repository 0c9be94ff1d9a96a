#!/usr/bin/env bash
# Installs Debian's CUDA 11.8 toolkit (non-free `nvidia-cuda-toolkit`) and its host compiler
# g++-11, for the compile checks of csrc/cuda. Needs root and apt; prints where nvcc is.
# Usage: scripts/install_cuda118.sh   (idempotent: does nothing when already installed)
set -euo pipefail
NVCC=/usr/lib/nvidia-cuda-toolkit/bin/nvcc
if [ -x "$NVCC" ] && command -v g++-11 >/dev/null; then
  echo "$NVCC"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "cannot install CUDA 11.8: needs root and apt-get" >&2
  exit 2
fi
# Enable contrib and non-free (deb822 or one-line sources) so that apt finds the toolkit.
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && sed -i -E '/^Components:/{/non-free( |$)/!s/$/ contrib non-free/}' "$f"
done
if [ -f /etc/apt/sources.list ]; then
  sed -i -E '/^deb .* main/{/non-free( |$)/!s/$/ contrib non-free/}' /etc/apt/sources.list
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends nvidia-cuda-toolkit g++-11 >&2
[ -x "$NVCC" ] || { echo "nvidia-cuda-toolkit installed but $NVCC is missing" >&2; exit 3; }
echo "$NVCC"
