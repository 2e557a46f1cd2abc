#!/usr/bin/env python3
"""The numeric checks of tests/gpu/run.sh. Each subcommand prints what it compared and exits 0
only when the numbers pass (1 when they do not, 2 when they are missing or unreadable).

    train-log METRICS STEPS            STEPS training records, every loss finite
    same-train A B TOL_FIRST TOL_ALL   per-step losses of two runs: step 1 within TOL_FIRST,
                                       every step within TOL_ALL (|a-b| <= tol * max(1, |a|))
    same-eval A.json B.json TOL        the eval metrics (`orpod eval --json`) of two runs
    eval-drops METRICS                 eval_loss of the last eval record below the first one's
    step-time METRICS WARMUP           median seconds per step after WARMUP steps (prints it)
    mem-peak SAMPLES BASELINE_MIB      peak of nvidia-smi memory.used samples (MiB) less baseline
    mem-vs-plan PEAK_MIB PLAN.json     measured peak against the plan's estimate_bytes
    trl-ratio METRICS TRL.json WARMUP  orpod / TRL median step time, and their step-1 losses
    quant-ratio METRICS PEAK REF.json REF_PEAK WARMUP TOL
                                       orpod against a 4-bit reference run (trl_cuda.py --quant bnb4
                                       or --unsloth): median step time, peak GPU memory above idle
                                       (PEAK and REF_PEAK: files holding mem-peak's number, sampled
                                       the same way for both processes), torch's own peak beside
                                       it, step-1 losses within TOL (relative)
"""

import json
import math
import statistics
import sys


def fail(msg, code=1):
    print(f"FAIL: {msg}")
    sys.exit(code)


def records(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}", 2)


def train_records(path):
    return [r for r in records(path) if "loss" in r and "eval_loss" not in r]


def eval_records(path):
    return [r for r in records(path) if "eval_loss" in r]


def close(a, b, tol):
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= tol * max(1.0, abs(a))


def median_step_s(path, warmup):
    recs = train_records(path)
    t = [r["elapsed_s"] for r in recs]
    diffs = [b - a for a, b in zip(t, t[1:])][max(0, warmup - 1):]
    if not diffs:
        fail(f"{path}: too few steps for a step time after {warmup} warm-up steps", 2)
    return statistics.median(diffs)


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{path}: {e}", 2)


def read_mib(path):
    try:
        with open(path) as f:
            return float(f.read())
    except (OSError, ValueError) as e:
        fail(f"no measured peak: {e}", 2)


def ref_step_s(ref, warmup, name):
    steps = ref["step_s"][warmup:]
    if not steps:
        fail(f"{name} logged too few steps", 2)
    return statistics.median(steps)


def step1_losses(metrics, ref, name, tol):
    """The step-1 loss of orpod and of the reference, printed; False when they differ by more
    than tol (relative to the reference), None when either run logged no loss."""
    a, b = train_records(metrics), ref["loss"]
    if not (a and b):
        return None
    d = abs(a[0]["loss"] - b[0]) / max(1.0, abs(b[0]))
    print(f"step-1 loss: orpod {a[0]['loss']:.6f}, {name} {b[0]:.6f}, rel diff {d:.2e}")
    return d <= tol


# The reference's display name by trl_cuda.py's mode.
REF_NAMES = {"trl": "TRL", "bnb4": "QLoRA", "unsloth": "Unsloth"}


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "train-log":
        path, steps = args[0], int(args[1])
        recs = train_records(path)
        losses = [r["loss"] for r in recs]
        print(f"{path}: {len(recs)} steps, losses {' '.join(f'{x:.6f}' for x in losses)}")
        if len(recs) != steps:
            fail(f"expected {steps} training records, found {len(recs)}")
        if not all(math.isfinite(x) for x in losses):
            fail("a loss is not finite")
    elif cmd == "same-train":
        a, b = train_records(args[0]), train_records(args[1])
        tol_first, tol_all = float(args[2]), float(args[3])
        if len(a) != len(b) or not a:
            fail(f"step counts differ or are zero: {len(a)} vs {len(b)}", 2)
        worst = 0.0
        for ra, rb in zip(a, b):
            d = abs(ra["loss"] - rb["loss"]) / max(1.0, abs(ra["loss"]))
            worst = max(worst, d)
            print(f"step {ra['step']}: loss {ra['loss']:.7f} vs {rb['loss']:.7f}  rel diff {d:.2e}")
        print(f"largest relative difference {worst:.2e} (step 1 limit {tol_first:g}, all {tol_all:g})")
        if not close(a[0]["loss"], b[0]["loss"], tol_first):
            fail("step 1 losses differ")
        if not all(close(ra["loss"], rb["loss"], tol_all) for ra, rb in zip(a, b)):
            fail("losses differ")
    elif cmd == "same-eval":
        try:
            a, b = (json.load(open(p)) for p in args[:2])
        except (OSError, ValueError) as e:
            fail(str(e), 2)
        tol = float(args[2])
        keys = sorted(set(a) & set(b))
        if not keys or "eval_loss" not in keys:
            fail("no eval metrics to compare", 2)
        bad = []
        for k in keys:
            d = abs(a[k] - b[k]) / max(1.0, abs(a[k]))
            print(f"{k:<28} {a[k]:>14.7f} {b[k]:>14.7f}  rel diff {d:.2e}")
            if not close(a[k], b[k], tol):
                bad.append(k)
        if bad:
            fail(f"beyond {tol:g}: {', '.join(bad)}")
        print(f"all {len(keys)} metrics within {tol:g}")
    elif cmd == "eval-drops":
        recs = eval_records(args[0])
        if len(recs) < 2:
            fail(f"{args[0]}: {len(recs)} eval records, need the one at start and the last", 2)
        first, last = recs[0]["eval_loss"], recs[-1]["eval_loss"]
        print(f"eval_loss at step {recs[0]['step']} {first:.6f}, at step {recs[-1]['step']} {last:.6f}")
        if not (math.isfinite(first) and math.isfinite(last) and last < first):
            fail("eval_loss did not decrease")
    elif cmd == "step-time":
        print(f"{median_step_s(args[0], int(args[1])):.4f}")
    elif cmd == "mem-peak":
        try:
            vals = [float(x) for x in open(args[0]).read().split() if x.strip()]
        except (OSError, ValueError) as e:
            fail(str(e), 2)
        if len(vals) < 2:
            fail(f"{args[0]}: {len(vals)} samples", 2)
        base = float(args[1])
        print(f"{max(vals) - base:.0f}")
    elif cmd == "mem-vs-plan":
        try:
            peak_mib = float(args[0])
            plan = json.load(open(args[1]))
        except (OSError, ValueError) as e:
            fail(str(e), 2)
        est = plan.get("estimate_bytes")
        if not est:
            fail(f"the plan has no estimate: {plan.get('reason')!r}", 2)
        est_mib = est / 2**20
        ratio = peak_mib / est_mib
        print(f"measured peak {peak_mib:.0f} MiB, plan estimate {est_mib:.0f} MiB "
              f"(device {plan.get('device')}), measured/estimate {ratio:.2f}")
        if peak_mib <= 0:
            fail("no memory use measured", 2)
        if ratio > 1.0:
            fail("the estimate is below the measured peak (admission could overcommit)")
        if ratio < 0.5:
            print("note: the estimate is more than twice the measured peak")
    elif cmd == "trl-ratio":
        orpod_s = median_step_s(args[0], int(args[2]))
        trl = load_json(args[1])
        trl_s = ref_step_s(trl, int(args[2]), "TRL")
        print(f"s/step: orpod {orpod_s:.4f}, TRL {trl_s:.4f}, orpod/TRL {orpod_s / trl_s:.2f}")
        if step1_losses(args[0], trl, "TRL", 1e-2) is False:
            fail("step-1 losses differ by more than 1%: the runs do not compute the same thing")
        if not (math.isfinite(orpod_s) and math.isfinite(trl_s) and trl_s > 0):
            fail("step times are not finite", 2)
    elif cmd == "quant-ratio":
        metrics, ref = args[0], load_json(args[2])
        warmup, tol = int(args[4]), float(args[5])
        name = REF_NAMES.get(ref.get("mode"), ref.get("mode"))
        orpod_s = median_step_s(metrics, warmup)
        ref_s = ref_step_s(ref, warmup, name)
        if not (math.isfinite(orpod_s) and math.isfinite(ref_s) and ref_s > 0):
            fail("step times are not finite", 2)
        print(f"s/step: orpod {orpod_s:.4f}, {name} {ref_s:.4f}, "
              f"orpod/{name} {orpod_s / ref_s:.2f}")
        # Both peaks are nvidia-smi's memory.used less the idle value, sampled every 200 ms while
        # the process ran: the same instrument, so CUDA context, cuBLAS workspace and kernel
        # images count on both sides. torch's max_memory_reserved sees only its caching
        # allocator; what the samples show above it is that context.
        orpod_mib, ref_mib = read_mib(args[1]), read_mib(args[3])
        reserved = ref["max_memory_reserved"] / 2**20
        allocated = ref["max_memory_allocated"] / 2**20
        missed = reserved > ref_mib
        if missed:
            ref_mib = reserved
        if orpod_mib <= 0 or ref_mib <= 0:
            fail("no memory use measured", 2)
        print(f"peak GPU memory (nvidia-smi memory.used less idle, each process): "
              f"orpod {orpod_mib:.0f} MiB, {name} {ref_mib:.0f} MiB, "
              f"orpod/{name} {orpod_mib / ref_mib:.2f}")
        if missed:
            print(f"note: the samples missed {name}'s peak; its torch max_memory_reserved is "
                  f"used instead, a lower bound (no CUDA context in it)")
        else:
            print(f"{name}'s {ref_mib:.0f} MiB: torch max_memory_reserved {reserved:.0f} MiB "
                  f"(allocated {allocated:.0f} MiB) + {ref_mib - reserved:.0f} MiB outside torch's "
                  f"allocator (CUDA context, cuBLAS workspace, kernel images)")
        same = step1_losses(metrics, ref, name, tol)
        if same is None:
            fail("no step-1 loss to compare", 2)
        if not same:
            fail(f"step-1 losses differ by more than {tol:g}: not the same job")
    else:
        fail(f"unknown check {cmd!r}", 2)


if __name__ == "__main__":
    main()
