#!/usr/bin/env bash
# Creates the venv that runs a real Triton server on CPU (tests/triton_server.py uses it).
#
# The nvidia-pytriton wheel ships the `tritonserver` binary, its libraries and the python
# backend; it pins numpy<2, so it gets a venv of its own beside trtcheck's. The python backend
# runs each served model's model.py with ONNX Runtime, installed here too. Idempotent: a stamp
# file that records the requirements skips the work when they have not changed.
#
# Usage: tools/triton_venv.sh [VENV]   (default: .cache/triton-venv under the repository)
# Prints the venv's path on success.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.cache/triton-venv}"
PYTHON="${PYTHON:-python3}"
REQUIREMENTS=(nvidia-pytriton "numpy<2" onnxruntime)
STAMP="$VENV/.trtcheck-triton-installed"
WANTED="${REQUIREMENTS[*]}"

# Parallel test workers (pytest -n) share one venv: one installs, the others wait for it.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANTED" && -x "$VENV/bin/python" ]]; then
    echo "$VENV"
    exit 0
fi

# A half-made venv (an interrupted install) is made again from scratch.
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" >&2

# The python backend needs its stub beside libtriton_python.so, built for this Python.
SITE="$("$VENV/bin/python" -c 'import os, pytriton; print(os.path.dirname(os.path.dirname(pytriton.__file__)))')"
TRITON="$SITE/pytriton/tritonserver"
VERSION="$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
STUB="$TRITON/python_backend_stubs/$VERSION/triton_python_backend_stub"
if [[ ! -f "$STUB" ]]; then
    echo "triton_venv.sh: nvidia-pytriton has no python backend stub for Python $VERSION" >&2
    exit 1
fi
cp "$STUB" "$TRITON/backends/python/"
test -x "$TRITON/bin/tritonserver"

echo "$WANTED" > "$STAMP"
echo "$VENV"
