#!/usr/bin/env python3
"""TRL's ORPOTrainer on CUDA with the settings of tests/gpu/job.toml: the reference side of
tests/gpu/run.sh's step-time and memory comparisons (trainer/benches/orpo_vs_trl.py is the CPU one).

    python tests/gpu/trl_cuda.py --hf-dir ~/.cache/orpod/smollm2-hf \\
        --data examples/prefs.jsonl --steps 8 --out /tmp/orpod-gpu/trl

Same model (the f32 Hugging Face folder that `orpod convert` makes of the GGUF), rows in file
order, LoRA r16 alpha 32 dropout 0 on the seven projections, 2 pairs per step, grad_accum 1,
lr 2e-4 linear without warmup, beta 0.1, clip 1.0, max_length 256. Three modes:

- default: TRL + PEFT on the weights in f32 (or --bf16);
- --quant bnb4: QLoRA, the weights quantized by bitsandbytes as they load (NF4, double
  quantization, bf16 compute); ORPOTrainer prepares the 4-bit model itself (peft's
  prepare_model_for_kbit_training) and casts it for bf16, as for any k-bit model;
- --unsloth: Unsloth's FastLanguageModel on the same folder, 4-bit with the same NF4 settings,
  its get_peft_model, then TRL's ORPOTrainer as importing unsloth patches it.

The two 4-bit modes are the reference for orpod's kept-quantized bf16 run (bf16 compute). No
mode checkpoints gradients: orpod's job does not (gradient_checkpointing = false).

Writes OUT/result.json: the mode, seconds of each optimizer step (on_step_begin -> on_step_end,
after a CUDA synchronize), the logged losses, torch's peak allocated and reserved bytes, the
trainer class, and versions.
"""

import argparse
import importlib.metadata
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", target_modules=ALL_PROJ)
MAX_LENGTH = 256


def load_plain(a, dtype):
    """The model as it is (f32 or bf16) and the LoRA config for the trainer to apply."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(a.hf_dir, dtype=dtype)
    return model, AutoTokenizer.from_pretrained(a.hf_dir), LoraConfig(task_type="CAUSAL_LM", **LORA)


def load_bnb4(a):
    """QLoRA the usual way: a BitsAndBytesConfig on from_pretrained (the one TRL's scripts build
    with get_quantization_config), the model straight on the GPU (bitsandbytes quantizes as the
    weights move there). The trainer
    sees is_loaded_in_4bit and runs prepare_model_for_kbit_training before get_peft_model, with
    the config's gradient_checkpointing; a call here as well would turn checkpointing on (its
    default), which the job does not use."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(a.hf_dir, quantization_config=bnb,
                                                 dtype=torch.bfloat16, device_map={"": 0})
    return model, AutoTokenizer.from_pretrained(a.hf_dir), LoraConfig(task_type="CAUSAL_LM", **LORA)


def load_unsloth(a):
    """Unsloth's 4-bit load (its BitsAndBytesConfig: nf4, double quantization, bf16 compute) and
    its own LoRA wrapping; the trainer then gets a PEFT model and no LoRA config."""
    import torch
    from unsloth import FastLanguageModel

    model, tok = FastLanguageModel.from_pretrained(
        model_name=a.hf_dir, max_seq_length=MAX_LENGTH, dtype=torch.bfloat16, load_in_4bit=True,
        use_gradient_checkpointing=False)
    model = FastLanguageModel.get_peft_model(model, use_gradient_checkpointing=False,
                                             random_state=42, **LORA)
    return model, tok, None


def versions(mode):
    names = ["torch", "transformers", "trl", "peft"]
    names += {"trl": [], "bnb4": ["bitsandbytes"],
              "unsloth": ["bitsandbytes", "unsloth", "unsloth_zoo"]}[mode]
    return {n: importlib.metadata.version(n) for n in names}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--quant", choices=["bnb4"], help="QLoRA: the base quantized by bitsandbytes")
    ap.add_argument("--unsloth", action="store_true", help="Unsloth's 4-bit model and LoRA")
    a = ap.parse_args()
    if a.quant and a.unsloth:
        ap.error("--unsloth quantizes with its own bitsandbytes settings: no --quant with it")
    mode = "unsloth" if a.unsloth else a.quant or "trl"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    if mode == "unsloth":
        # Unsloth patches transformers, PEFT and TRL's trainers (trl.experimental.orpo's too) when
        # it is imported, so before them. Its generated code goes under OUT rather than into the
        # working directory (the repository), and from_pretrained sends no statistics.
        os.environ.setdefault("UNSLOTH_COMPILE_LOCATION",
                              str(out.resolve() / "unsloth_compiled_cache"))
        os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
        import unsloth  # noqa: F401

    import torch
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    if not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device")
    if mode == "unsloth" and not any(c.__name__.startswith("Unsloth") for c in ORPOTrainer.__mro__):
        raise SystemExit(f"unsloth did not patch {ORPOTrainer.__module__}.ORPOTrainer")

    class FileOrderORPOTrainer(ORPOTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.step_s = []
            self.begin = None

        def on_step_begin(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.step_s.append(time.perf_counter() - self.begin)

    # The 4-bit modes compute in bf16 whatever --bf16 says: that is the job they stand in for.
    bf16 = a.bf16 or mode != "trl"
    dtype = torch.bfloat16 if bf16 else torch.float32
    if mode == "unsloth":
        model, tok, peft_config = load_unsloth(a)
    elif mode == "bnb4":
        model, tok, peft_config = load_bnb4(a)
    else:
        model, tok, peft_config = load_plain(a, dtype)
    rows = [json.loads(line) for line in Path(a.data).read_text().splitlines() if line.strip()]
    args = ORPOConfig(
        output_dir=str(out / "trainer"), bf16=bf16, fp16=False,
        report_to="none", logging_steps=1, remove_unused_columns=False, dataloader_num_workers=0,
        save_strategy="no", eval_strategy="no", disable_tqdm=True, max_length=MAX_LENGTH,
        per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=2e-4,
        lr_scheduler_type="linear", warmup_steps=0, max_steps=a.steps,
        max_grad_norm=1.0, weight_decay=0.0, beta=0.1, seed=42,
        # ORPOConfig checkpoints by default (TRL 1.x); orpod's job (tests/gpu/job.toml) does
        # not, so neither does any mode here: the same work on both sides of the ratio.
        gradient_checkpointing=False,
    )
    timer = StepTimer()
    trainer = FileOrderORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                   processing_class=tok, peft_config=peft_config, callbacks=[timer])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    result = {
        "mode": mode,
        "device": torch.cuda.get_device_name(0),
        "dtype": str(dtype),
        "step_s": timer.step_s,
        "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h],
        "max_memory_allocated": torch.cuda.max_memory_allocated(),
        "max_memory_reserved": torch.cuda.max_memory_reserved(),
        "trainer": f"{ORPOTrainer.__module__}.{ORPOTrainer.__qualname__}",
        "versions": versions(mode),
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("mode", "device", "step_s", "loss")}))


if __name__ == "__main__":
    main()
