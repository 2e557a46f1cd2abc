#!/usr/bin/env python3
"""Checks orpod's exports with the Python tools people will load them with.

For one trained run (see tests/interop/run.sh) it loads
  - the PEFT adapter with peft.PeftModel.from_pretrained(base, DIR),
  - the merged Hugging Face folder with transformers.AutoModelForCausalLM.from_pretrained,
  - each GGUF file with the `gguf` reader (names, types, metadata), with transformers' GGUF
    loader (which undoes llama.cpp's Q/K permutation) and with llama.cpp (llama-cpp-python),
computes TRL's eval metrics (ORPOTrainer.evaluate, f32, CPU) or, for llama.cpp, the same
length-averaged completion log-probs from its logits, and compares them with
`orpod eval --adapter DIR --json` (given as --orpod-eval). Exits 1 on any failure and prints one
line per check with the measured difference.

Tolerances: 1e-4 absolute for f32 exports (PEFT adapter, merged folder). GGUF files round the
weights: see BOUNDS below (measured on SmolLM2-135M, with margin).
"""

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("ORPOD_INTEROP_THREADS", "2")))

import gguf  # noqa: E402
import transformers  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

transformers.logging.set_verbosity_error()

# Compared metrics: the log-probs (what the issue names) and the loss terms built from them.
METRICS = ["eval_logps/chosen", "eval_logps/rejected", "eval_nll_loss", "eval_log_odds_ratio"]
LOGPS = ["eval_logps/chosen", "eval_logps/rejected"]
F32_TOL = 1e-4
# Absolute bounds on the eval log-probs (average log-prob per token, about -2 here) for rounded
# weights. Measured on SmolLM2-135M after 3 steps: f16 1.2e-4 (transformers' GGUF loader, f32
# compute) and 1.9e-4 (llama.cpp); q8_0 9.6e-3 and 2.2e-2 (llama.cpp also rounds activations to
# 8 bits in its q8_0 matmuls).
BOUNDS = {"f16": 2e-3, "q8_0": 2e-2}
LLAMA_CPP_BOUNDS = {"f16": 2e-3, "q8_0": 5e-2}
# The adapter's effect on the eval log-probs, llama.cpp (Q4_1 base + adapter.gguf, minus the base
# alone) against orpod (with minus without the adapter), as a fraction of orpod's effect. llama.cpp
# quantizes activations on a quantized base, which leaves 1.8% of the effect (7.7e-3 of 0.42,
# measured on SmolLM2's 3-step interop adapter); a wrong alpha, scale or Q/K row order is off by
# a good part of the effect itself.
ADAPTER_EFFECT_REL = 0.05
# Below this the adapter's effect is too small for the relative check to mean anything.
ADAPTER_EFFECT_MIN = 2e-2

failures = []


def check(what, diff, tol):
    ok = diff <= tol
    print(f"{'ok  ' if ok else 'FAIL'} {what}: max |diff| {diff:.3e} (tolerance {tol:.0e})", flush=True)
    if not ok:
        failures.append(what)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def trl_eval(model, tok, args):
    """TRL's ORPOTrainer.evaluate() on the eval rows, f32 CPU, as the parity fixtures ran it."""
    eval_ds = Dataset.from_list(read_jsonl(args.eval))
    config = ORPOConfig(
        output_dir=str(Path(args.work) / "trl"), bf16=False, use_cpu=True, report_to="none",
        gradient_checkpointing=False, remove_unused_columns=False, dataloader_num_workers=0,
        per_device_eval_batch_size=args.eval_batch_size, max_length=args.max_length, beta=args.beta,
        save_strategy="no",
    )
    # ORPOTrainer needs a train set even to evaluate; the eval rows serve.
    trainer = ORPOTrainer(model=model, args=config, train_dataset=eval_ds, eval_dataset=eval_ds,
                          processing_class=tok)
    return trainer.evaluate(), trainer.eval_dataset


def compare(label, got, want, tol, keys=METRICS):
    diff = max(abs(got[k] - want[k]) for k in keys)
    check(f"{label} vs orpod eval --adapter ({', '.join(keys)})", diff, tol)
    return diff


def row_logps(logits, ids, labels):
    """Mean log-prob of the labelled tokens of one row (TRL's average_log_prob)."""
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float32))[:-1]
    target = torch.as_tensor(ids[1:])
    mask = torch.as_tensor(labels[1:]) != -100
    lp = torch.log_softmax(logits, -1).gather(-1, target[:, None])[:, 0]
    return float(lp[mask].mean())


def llama_cpp_logps(path, rows, batch, lora=None):
    """TRL-shaped eval_logps/{chosen,rejected} from llama.cpp's logits on TRL's token ids, with
    the GGUF LoRA adapter `lora` applied (as `llama-cli --lora` and Ollama's ADAPTER do)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=1024, logits_all=True, verbose=False, n_threads=2, seed=0,
                lora_path=None if lora is None else str(lora))
    out = {}
    for which in ["chosen", "rejected"]:
        per_row = []
        for r in rows:
            ids, labels = r[f"{which}_input_ids"], r[f"{which}_labels"]
            llm.reset()
            llm.eval(ids)
            per_row.append(row_logps(llm.scores[: len(ids)], ids, labels))
        # TRL averages per batch, then over batches.
        means = [np.mean(per_row[i:i + batch]) for i in range(0, len(per_row), batch)]
        out[f"eval_logps/{which}"] = float(np.mean(means))
    return llm, out


def check_gguf_file(path, kind, base_tok):
    """The file as llama.cpp's own gguf-py reads it: architecture, tensor names and types, the
    tokenizer and chat template."""
    r = gguf.GGUFReader(str(path))
    fields = r.fields

    def value(key):
        f = fields[key]
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(f.parts[f.data[0]]).decode()
        return f.parts[f.data[0]].tolist()[0]

    arch = value("general.architecture")
    names = {t.name: t for t in r.tensors}
    want_type = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[kind]
    problems = []
    for required in ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight",
                     "blk.0.attn_norm.weight", "output_norm.weight"]:
        if required not in names:
            problems.append(f"missing {required}")
    if not problems:
        if names["blk.0.attn_q.weight"].tensor_type != want_type:
            problems.append(f"attn_q type {names['blk.0.attn_q.weight'].tensor_type.name}, want {kind}")
        if names["output_norm.weight"].tensor_type != gguf.GGMLQuantizationType.F32:
            problems.append("norms must stay f32")
    ntok = len(fields["tokenizer.ggml.tokens"].data)
    if ntok < len(base_tok):
        problems.append(f"{ntok} tokens < tokenizer's {len(base_tok)}")
    if "tokenizer.chat_template" not in fields:
        problems.append("no tokenizer.chat_template")
    elif value("tokenizer.chat_template") != base_tok.chat_template:
        problems.append("chat template differs from the base tokenizer's")
    if value("tokenizer.ggml.eos_token_id") != base_tok.eos_token_id:
        problems.append("eos id differs")
    print(f"{'ok  ' if not problems else 'FAIL'} gguf reader {path.name}: arch {arch}, {len(names)} tensors, "
          f"{ntok} tokens{': ' + '; '.join(problems) if problems else ''}", flush=True)
    if problems:
        failures.append(f"gguf reader {path.name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the base model as a Hugging Face folder")
    ap.add_argument("--adapter", required=True, help="orpod's PEFT adapter folder")
    ap.add_argument("--merged", help="orpod's merged Hugging Face folder")
    ap.add_argument("--gguf", action="append", default=[], help="KIND=PATH, KIND in f16|q8_0")
    ap.add_argument("--orpod-eval", required=True, help="JSON of `orpod eval --adapter ... --json`")
    ap.add_argument("--eval", required=True, help="the eval JSONL")
    ap.add_argument("--eval-batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--work", required=True)
    ap.add_argument("--prompt", default="What is the capital of France?")
    ap.add_argument("--skip-answer", action="store_true", help="random test models answer noise")
    ap.add_argument("--gguf-adapter", help="BASE.gguf=ADAPTER.gguf: orpod's GGUF LoRA adapter on the base GGUF")
    ap.add_argument("--orpod-base-eval", help="JSON of `orpod eval` at the base weights (no adapter)")
    ap.add_argument("--orpod-generate", help="JSON lines of `orpod generate --json` on the adapter (greedy)")
    args = ap.parse_args()

    want = json.loads(Path(args.orpod_eval).read_text())
    tok = AutoTokenizer.from_pretrained(args.base)

    # 1. PEFT adapter on the f32 base.
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, args.adapter)
    got, eval_ds = trl_eval(peft_model, tok, args)
    compare("peft.PeftModel.from_pretrained", got, want, F32_TOL)
    rows = [eval_ds[i] for i in range(len(eval_ds))]
    del peft_model, base

    # 2. The merged folder, with its own tokenizer files.
    if args.merged:
        merged_tok = AutoTokenizer.from_pretrained(args.merged)
        probe = "Hello world 12345 <|im_start|>user\nhi<|im_end|>"
        if merged_tok(probe)["input_ids"] != tok(probe)["input_ids"]:
            failures.append("merged tokenizer")
            print("FAIL merged tokenizer encodes differently from the base's", flush=True)
        merged = AutoModelForCausalLM.from_pretrained(args.merged, dtype=torch.float32)
        got, _ = trl_eval(merged, merged_tok, args)
        compare("AutoModelForCausalLM.from_pretrained(merged)", got, want, F32_TOL)
        # Greedy answers: token for token what transformers' generate writes on the merged
        # model from the same prompt ids, stopping at the same stop tokens.
        if args.orpod_generate:
            for line in Path(args.orpod_generate).read_text().splitlines():
                g = json.loads(line)
                out = merged.generate(torch.tensor([g["prompt_ids"]]), do_sample=False,
                                      max_new_tokens=len(g["tokens"]) if g["finish"] == "length" else 64,
                                      eos_token_id=g["stop_ids"], pad_token_id=g["stop_ids"][0],
                                      attention_mask=torch.ones(1, len(g["prompt_ids"]), dtype=torch.long))
                theirs = out[0, len(g["prompt_ids"]):].tolist()
                if theirs and theirs[-1] in g["stop_ids"]:
                    theirs = theirs[:-1]
                same = theirs == g["tokens"]
                print(f"{'ok  ' if same else 'FAIL'} orpod generate vs transformers generate(do_sample=False) "
                      f"on {g['prompt']!r}: {len(g['tokens'])} tokens ({g['finish']}), {g['text']!r}", flush=True)
                if not same:
                    print(f"     orpod:        {g['tokens']}\n     transformers: {theirs}", flush=True)
                    failures.append(f"generate {g['prompt']!r}")
        del merged

    # 3. GGUF files.
    for spec in args.gguf:
        kind, path = spec.split("=", 1)
        path = Path(path)
        check_gguf_file(path, kind, tok)
        # Alone in a folder: transformers would take an adapter_config.json beside it for a PEFT
        # adapter and load that adapter's base instead.
        alone = Path(args.work) / f"gguf-{kind}-{path.stem}"
        alone.mkdir(parents=True, exist_ok=True)
        link = alone / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
        hf = AutoModelForCausalLM.from_pretrained(str(alone), gguf_file=path.name, dtype=torch.float32)
        # The weights are dequantized to f32; the Trainer would refuse a "quantized" model.
        hf.is_quantized, hf.hf_quantizer = False, None
        got, _ = trl_eval(hf, tok, args)
        compare(f"transformers GGUF loader {path.name}", got, want, BOUNDS[kind], LOGPS)
        del hf
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            failures.append("llama-cpp-python missing")
            print("FAIL llama-cpp-python is not installed (tests/interop/setup_venv.sh installs it)", flush=True)
            continue
        llm, lp = llama_cpp_logps(path, rows, args.eval_batch_size)
        diff = max(abs(lp[k] - want[k]) for k in lp)
        check(f"llama.cpp {path.name} eval_logps/chosen,rejected vs orpod", diff, LLAMA_CPP_BOUNDS[kind])
        # llama.cpp's own tokenizer (from the GGUF metadata) and chat template, then an answer.
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids_cpp = llm.tokenize(text.encode(), add_bos=False, special=True)
        ids_hf = tok(text, add_special_tokens=False)["input_ids"]
        same = ids_cpp == ids_hf
        print(f"{'ok  ' if same else 'FAIL'} llama.cpp tokenizer {path.name} on the chat prompt "
              f"({len(ids_cpp)} vs {len(ids_hf)} tokens)", flush=True)
        if not same:
            failures.append(f"llama.cpp tokenizer {path.name}")
        if args.skip_answer:
            del llm
            continue
        answer = llm.create_chat_completion(messages=[{"role": "user", "content": args.prompt}], max_tokens=24,
                                            temperature=0.0)["choices"][0]["message"]["content"]
        print(f"{'ok  ' if answer.strip() else 'FAIL'} llama.cpp {path.name} answers {args.prompt!r}: "
              f"{answer.strip()!r}", flush=True)
        if not answer.strip():
            failures.append(f"llama.cpp answer {path.name}")
        del llm

    # 4. The GGUF LoRA adapter on the (quantized) base GGUF. llama.cpp quantizes activations in
    # its matmuls on a quantized base, so its log-probs differ from orpod's f32 ones by about the
    # same amount with and without the adapter: what must match is the adapter's effect.
    if args.gguf_adapter:
        base_gguf, adapter_gguf = args.gguf_adapter.split("=", 1)
        base_want = json.loads(Path(args.orpod_base_eval).read_text())
        llm, plain = llama_cpp_logps(base_gguf, rows, args.eval_batch_size)
        del llm
        llm, lora = llama_cpp_logps(base_gguf, rows, args.eval_batch_size, lora=adapter_gguf)
        del llm
        moved = {k: want[k] - base_want[k] for k in LOGPS}
        biggest = max(abs(v) for v in moved.values())
        print(f"     orpod: the adapter moves eval_logps by {moved}", flush=True)
        if biggest < ADAPTER_EFFECT_MIN:
            failures.append("adapter effect too small to check")
            print(f"FAIL the adapter moves eval_logps by only {biggest:.2e}: train it longer", flush=True)
        diff = max(abs((lora[k] - plain[k]) - moved[k]) for k in LOGPS)
        check("llama.cpp base GGUF + adapter.gguf: the adapter's effect on eval_logps vs orpod", diff,
              ADAPTER_EFFECT_REL * biggest)
        diff = max(abs(lora[k] - want[k]) for k in LOGPS)
        check("llama.cpp base GGUF + adapter.gguf eval_logps vs orpod", diff, LLAMA_CPP_BOUNDS["q8_0"])

    if failures:
        print(f"{len(failures)} interop check(s) failed: {', '.join(failures)}", flush=True)
        sys.exit(1)
    print("all interop checks passed", flush=True)


if __name__ == "__main__":
    main()
