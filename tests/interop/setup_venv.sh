#!/usr/bin/env bash
# Creates (once) the Python venv of the interop tests, from PyPI with pinned versions
# (requirements.txt beside this file), cached outside the clone: ${ORPOD_CACHE:-~/.cache/orpod}/venv.
# A stamp file holds the requirements it was built from; when they change, pip brings the venv
# up to date. Prints the venv's path on stdout; progress goes to stderr.
#
# torch's default PyPI wheel pulls the CUDA libraries (about 6 GB); the tests run on the CPU.
# llama-cpp-python has no wheel on PyPI for Linux: pip builds llama.cpp from source with the
# machine's gcc and a cmake it downloads itself (about 15 minutes on 2 cores; no cmake needed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${ORPOD_INTEROP_VENV:-${ORPOD_CACHE:-$HOME/.cache/orpod}/venv}"
req="$here/requirements.txt"
stamp="$venv/.orpod-interop-requirements"

if [ -f "$stamp" ] && cmp -s "$stamp" "$req" && "$venv/bin/python" -c 'import llama_cpp, peft, trl, gguf' 2>/dev/null; then
    echo "$venv"
    exit 0
fi
echo "setting up the interop venv in $venv (first run: downloads ~6 GB and builds llama.cpp)" >&2
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
# Portable CPU build: a cached venv may move to another machine of the CI pool.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF}" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$venv/bin/python" -m pip install --quiet -r "$req" >&2
cp "$req" "$stamp"
echo "$venv"
