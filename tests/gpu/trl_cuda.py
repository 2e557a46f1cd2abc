#!/usr/bin/env python3
"""TRL's ORPOTrainer on CUDA with the settings of tests/gpu/job.toml: the reference side of
tests/gpu/run.sh's step-time comparison (trainer/benches/orpo_vs_trl.py is the CPU one).

    python tests/gpu/trl_cuda.py --hf-dir ~/.cache/orpod/smollm2-hf \\
        --data examples/prefs.jsonl --steps 8 --out /tmp/orpod-gpu/trl

Same model (the f32 Hugging Face folder that `orpod convert` makes of the GGUF), rows in file
order, LoRA r16 alpha 32 dropout 0 on the seven projections, 2 pairs per step, grad_accum 1,
lr 2e-4 linear without warmup, beta 0.1, clip 1.0, max_length 256, f32 (or --bf16). Writes
OUT/result.json: seconds of each optimizer step (on_step_begin -> on_step_end, after a CUDA
synchronize), the logged losses, torch's peak allocated and reserved bytes, and versions.
"""

import argparse
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf-dir", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", required=True)
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()

    import peft
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    if not torch.cuda.is_available():
        raise SystemExit("torch sees no CUDA device")

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

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16 if a.bf16 else torch.float32
    tok = AutoTokenizer.from_pretrained(a.hf_dir)
    model = AutoModelForCausalLM.from_pretrained(a.hf_dir, dtype=dtype)
    rows = [json.loads(line) for line in Path(a.data).read_text().splitlines() if line.strip()]
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none",
                             task_type="CAUSAL_LM", target_modules=ALL_PROJ)
    args = ORPOConfig(
        output_dir=str(out / "trainer"), bf16=a.bf16, fp16=False,
        report_to="none", logging_steps=1, remove_unused_columns=False, dataloader_num_workers=0,
        save_strategy="no", eval_strategy="no", disable_tqdm=True, max_length=256,
        per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=2e-4,
        lr_scheduler_type="linear", warmup_steps=0, max_steps=a.steps,
        max_grad_norm=1.0, weight_decay=0.0, beta=0.1, seed=42,
    )
    timer = StepTimer()
    trainer = FileOrderORPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                   processing_class=tok, peft_config=peft_config, callbacks=[timer])
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    result = {
        "device": torch.cuda.get_device_name(0),
        "dtype": str(dtype),
        "step_s": timer.step_s,
        "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h],
        "max_memory_allocated": torch.cuda.max_memory_allocated(),
        "max_memory_reserved": torch.cuda.max_memory_reserved(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
    }
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("device", "step_s", "loss")}))


if __name__ == "__main__":
    main()
