#!/usr/bin/env bash
# Creates .venv (if absent), installs torch and the requirements, builds the extension.
# Works offline when torch and the requirements are already importable (GPU image).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" 2>/dev/null; then
    # An image with torch in the system Python: reuse it rather than downloading another.
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

if ! "$PY" -c "import torch" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0"
fi
# Only what is missing is fetched; an offline image that already has everything installs nothing.
"${PIP[@]}" -r requirements.txt
"${PIP[@]}" -r requirements-dev.txt || echo "warning: could not install requirements-dev.txt (offline?); tests needing them skip" >&2
# --no-deps: the requirements above are already satisfied; --no-build-isolation: build against this torch.
"${PIP[@]}" --no-build-isolation --no-deps -e .
"$PY" -c "import lc4_kernels as k; print('lc4_kernels backends:', ', '.join(k.available_backends()))"
