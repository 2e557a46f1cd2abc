#!/usr/bin/env bash
# Fuzzes the parsers that take outside input (fuzz/: the job file, JSONL data rows) for a
# bounded time each, on stable Rust, and fails on any crash. A crashing input is kept under
# $ORPOD_FUZZ_DIR/artifacts/<target>/; replay it with
#   cargo fuzz run --fuzz-dir fuzz --sanitizer none <target> <file>
#
# Stable works because cargo-fuzz's coverage flags (-Cpasses=sancov-module, -Cllvm-args=...) are
# stable codegen options; only a sanitizer needs -Z flags, hence RUSTC_BOOTSTRAP=1 for those.
#
# Settings (environment):
#   ORPOD_FUZZ_SECONDS    run time per target (default 30)
#   ORPOD_FUZZ_TARGETS    targets to run (default "job_file data_rows")
#   ORPOD_FUZZ_SANITIZER  none (default: the parsers are safe Rust) or address
#   ORPOD_FUZZ_DIR        the inputs a run adds and crash artifacts (default ~/.cache/orpod/fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${ORPOD_FUZZ_SECONDS:-30}"
targets="${ORPOD_FUZZ_TARGETS:-job_file data_rows}"
sanitizer="${ORPOD_FUZZ_SANITIZER:-none}"
scratch="${ORPOD_FUZZ_DIR:-$HOME/.cache/orpod/fuzz}"
# libFuzzer takes 0 (or text) as "no limit": refuse it rather than run forever.
case "$seconds" in
'' | *[!0-9]* | 0)
    echo "ORPOD_FUZZ_SECONDS must be a whole number of seconds > 0, found '$seconds'" >&2
    exit 2
    ;;
esac
# Own target dirs: the coverage and sanitizer flags would otherwise rebuild the dependencies of
# the main build (and of the other sanitizer) on every switch.
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz-$sanitizer"

# cargo-fuzz from crates.io, cached outside the repo and installed only when missing.
cargo_fuzz_version=0.13.2
tools="$HOME/.cache/orpod/cargo-fuzz"
if ! "$tools/bin/cargo-fuzz" --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"
# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null; then
    apt-get update && apt-get install -y g++
fi
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi

build=(--fuzz-dir fuzz --sanitizer "$sanitizer" --target-dir "$target_dir")
cargo fuzz build "${build[@]}"

failed=0
for target in $targets; do
    # New inputs go to the scratch corpus (first directory); the committed seeds are read only.
    corpus="$scratch/corpus/$target"
    artifacts="$scratch/artifacts/$target"
    log="$scratch/$target.log"
    mkdir -p "$corpus" "$artifacts"
    dict=()
    if [ -f "fuzz/dict/$target.dict" ]; then
        dict=("-dict=fuzz/dict/$target.dict")
    fi
    rc=0
    cargo fuzz run "${build[@]}" "$target" "$corpus" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ "$rc" -eq 0 ]; then
        echo "fuzz $target: ${runs:-?} executions in ${seconds}s, no crash"
    else
        failed=1
        echo "fuzz $target: FAILED (exit $rc) after ${runs:-?} executions; log $log" >&2
        tail -n 40 "$log" >&2
        ls -1 "$artifacts" >&2
    fi
done
exit "$failed"
