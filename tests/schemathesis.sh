#!/usr/bin/env bash
# Property-based API check: schemathesis (PyPI, pinned) generates requests from the committed
# api-spec/openapi.json and runs them against a real daemon with every check on (`--checks all`,
# none excluded); any failed check fails the run. The venv is cached in
# ${ORPOD_CACHE:-~/.cache/orpod}/schemathesis.
#
# positive_data_acceptance (a schema-valid request must not get a 4xx other than 401, 403, 404,
# 409, 429) holds because the spec states every rule the daemon checks that JSON Schema can state
# (patterns, bounds, lengths, one-of, rules between keys: daemon/src/http/rules.rs), and the
# hooks in tests/schemathesis_hooks.py change only what no static schema can know. Each is exact:
# - A job names resources on this server: `model.base` (and `lora.init_adapter`) a model inside
#   its model_roots, `data.train`/`data.eval` an uploaded data set. The spec gives their form
#   (`sha256:<64 hex>`, printable paths); which exist is server state, like an id. For positive
#   cases of POST /v1/jobs and /v1/plan the hook names what exists (the tiny-llama fixture under
#   model_roots, the data set uploaded below, no init adapter), each value valid for its key, so
#   every other key of the generated job is still checked against the daemon. Negative cases are
#   left as generated.
# - `job_toml` is TOML text; JSON Schema cannot describe it. Positive cases get a valid job file.
# - `data.max_prompt_length` must be below `data.max_length`: JSON Schema cannot compare two
#   values, so the spec says it in words and the hook drops positive cases that break it.
# No status is added to the accepted ones, and no check is off.
# The upload body is JSON Lines (application/x-ndjson); schemathesis has no serializer for it,
# so the hooks write the generated array of rows one per line.
# Usage: tests/schemathesis.sh PATH/TO/orpod [max examples per operation, default 25]
#        [more `schemathesis run` options, e.g. --report json --report-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
orpod="$1"
examples="${2:-25}"
shift $(($# < 2 ? $# : 2))
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
# Models: the tiny test model (a Hugging Face folder). One job runs at a time; a quiet event
# stream gets a keep-alive every second, so a followed job's stream ends within the timeout.
cat >"$work/orpod.toml" <<EOF
model_roots = ["$PWD/trainer/tests/fixtures"]
max_running = 1
events_keepalive_s = 1
cancel_grace_s = 1
# The per-user limits at their widest: every job the spec allows is one the daemon takes (the
# limits are tested in tests/e2e/security.rs).
max_queued_per_user = 9223372036854775807
max_steps_per_user = 9223372036854775807
max_keep_checkpoints = 65536
min_save_every = 1
EOF
# A shared daemon: every request carries an admin's token (schemathesis' ignored_auth check
# also sends requests without it and with a wrong one, and expects 401).
"$orpod" user add st --admin --state-dir "$work/state" 2>/dev/null
token="$("$orpod" token create --user st --state-dir "$work/state" 2>/dev/null)"
"$orpod" serve --config "$work/orpod.toml" --listen 127.0.0.1:0 --state-dir "$work/state" \
    2>"$work/orpod.log" &
pid=$!
# A cold start of the debug build can take seconds.
for _ in $(seq 600); do
    [ -s "$work/state/orpod.addr" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/orpod.log" >&2; exit 1; }
    sleep 0.05
done
url="http://$(cat "$work/state/orpod.addr")"
# The data set the jobs name. Its prompts are empty, so every row fits the smallest
# data.max_length (2 tokens: BOS, then the answers cut to one token); a job whose prompts fill
# max_length is refused (400), a rule between the job and the data set's content. The extra key
# keeps schemathesis from generating these bytes, so no stateful DELETE learns their hash.
printf '%s\n' \
    '{"source": "tests/schemathesis.sh", "prompt": "", "chosen": "yes", "rejected": "no"}' \
    '{"source": "tests/schemathesis.sh", "prompt": "", "chosen": "no", "rejected": "yes"}' \
    >"$work/prefs.jsonl"
reference="$(curl -sf -X POST -H 'Content-Type: application/x-ndjson' -H "Authorization: Bearer $token" \
    --data-binary @"$work/prefs.jsonl" "$url/v1/datasets" |
    "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["reference"])')"
export ORPOD_ST_MODEL=tiny-llama ORPOD_ST_DATASET="$reference"
export SCHEMATHESIS_HOOKS="$PWD/tests/schemathesis_hooks.py"

# Run from the temporary folder: schemathesis keeps its example database in the working folder.
spec="$PWD/api-spec/openapi.json"
cd "$work"
"$venv/bin/schemathesis" run "$spec" --url "$url" \
    --max-examples "$examples" --seed 1 --workers 1 -H "Authorization: Bearer $token" \
    --suppress-health-check all \
    --checks all --request-timeout 5 "$@" \
    || { echo "schemathesis failed; daemon log:" >&2; tail -50 "$work/orpod.log" >&2; exit 1; }
