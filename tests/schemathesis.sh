#!/usr/bin/env bash
# Property-based API check: schemathesis (PyPI, pinned) generates requests from the committed
# api-spec/openapi.json and runs them against a real daemon; any failed check fails the run.
# The venv is cached in ${ORPOD_CACHE:-~/.cache/orpod}/schemathesis.
# `positive_data_acceptance` is off: a schema-valid job is still refused when its model is not on
# the server or its data set was never uploaded, which JSON Schema cannot express.
# Usage: tests/schemathesis.sh PATH/TO/orpod [max examples per operation, default 25]
set -euo pipefail
cd "$(dirname "$0")/.."
orpod="$1"
examples="${2:-25}"
cache="${ORPOD_CACHE:-$HOME/.cache/orpod}"
venv="$cache/schemathesis"
version=4.32.5
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
    echo "installing schemathesis $version into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==$version"
fi

work="$(mktemp -d)"
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
"$orpod" serve --listen 127.0.0.1:0 --state-dir "$work/state" 2>"$work/orpod.log" &
pid=$!
for _ in $(seq 200); do
    [ -s "$work/state/orpod.addr" ] && break
    sleep 0.05
done
url="http://$(cat "$work/state/orpod.addr")"
# One job and data set, so routes with ids have something real to find.
printf '{"prompt": "p", "chosen": "c", "rejected": "r"}\n' >"$work/prefs.jsonl"
curl -sf -X POST --data-binary @"$work/prefs.jsonl" "$url/v1/datasets" >/dev/null

# Run from the temporary folder: schemathesis keeps its example database in the working folder.
spec="$PWD/api-spec/openapi.json"
cd "$work"
"$venv/bin/schemathesis" run "$spec" --url "$url" \
    --max-examples "$examples" --seed 1 --workers 1 \
    --suppress-health-check all \
    --exclude-checks positive_data_acceptance \
    || { echo "schemathesis failed; daemon log:" >&2; tail -50 "$work/orpod.log" >&2; exit 1; }
