"""Issue #5: peak memory of one 3D U-Net training step, float32 vs mixed_bfloat16 vs remat, per sample.

Every configuration runs in a FRESH Python subprocess (``--child``), so no allocator cache, traced graph or
optimizer state of one configuration inflates the next. Inside the child:

1. import TensorFlow/Keras/medtf, set the precision policy, build ``unet3d`` (with ``remat=True`` for the remat
   settings: block-level rematerialisation, `medtf.layers.ConvBlock`), compile with AdamW + the experiment's loss
   (``jit_compile=False``, as the experiment config says);
2. ``rss_built`` = VmRSS; the high-water mark is reset (``echo 5 > /proc/self/clear_refs``); one warm-up
   ``train_on_batch`` (traces the step, creates the optimizer slots);
3. the high-water mark is reset again; one more ``train_on_batch`` (forward + backward + AdamW update);
   ``peak`` = VmHWM.

Reported per configuration: ``step = peak - rss_built``: what a steady-state training step needs on top of the
built model and the TF runtime (activations kept for backward, gradients, optimizer slots, workspaces, and whatever
the allocators keep cached from the warm-up step, because training needs that too; plus the traced graph, a small
constant). Also the process's total peak (``ru_maxrss``, includes TF's ~0.6 GB runtime) and the peak above the
RSS right before the measured step (small when allocators reuse the warm-up step's memory: not a usable
measure on its own). ``MALLOC_MMAP_THRESHOLD_`` is 1 MiB in the child so glibc returns freed tensors to the OS.

Each configuration then runs ``--tensor-repeats`` more children with ``TF_CPU_ALLOCATOR_USE_BFC=true`` (median
reported; the executor's op order varies between runs): TF's BFC allocator on the CPU
keeps the same statistics as on a GPU, so ``tensor_step_bytes`` = ``get_memory_info("CPU:0")["peak"]`` during the
measured step minus the bytes alive before it (weights, optimizer slots): the peak of live TF tensors, which is
what a GPU has to hold (minus cuDNN workspaces), without oneDNN scratch buffers, glibc and allocator caches.
RSS is measured in the first child because the BFC pool changes the RSS.

The opt-in setting ``remat_scope`` (``--settings``) measures Keras' own per-layer ``keras.RematScope("full")``
around model construction instead, for comparison; it needs two workarounds on Keras 3 / TF (see `child` and
`patch_remat_autocast`): the scope also marks the functional Model, whose whole-model `tf.recompute_grad` fails in
graph mode, and under mixed precision the recomputation runs outside the layer's autocast scope.
``layer_output_bytes`` adds an analytic, device-independent column (bytes of all layer outputs of the model as
built, in their compute dtype: what standard backprop keeps; with ``remat=True`` the block boundaries only).

Per sample: ``step / batch``; and the marginal cost of one more sample, ``step(B=2) - step(B=1)``, which is what
grows with the batch (the fixed part, e.g. weight gradients, does not).

Usage (repository root)::

    .venv/bin/python benchmarks/memory.py                 # 128^3, batch 1 and 2, 4 settings, + 96^3 patch line
    .venv/bin/python benchmarks/memory.py --size 64 --quick   # small debug run
    .venv/bin/python benchmarks/memory.py --settings float32,remat_scope --batches 1 --patch-size 0
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> (precision policy, remat: None | "block" (model remat=True) | "scope" (keras.RematScope))
    "float32": ("float32", None),
    "mixed_bfloat16": ("mixed_bfloat16", None),
    "remat": ("float32", "block"),
    "mixed_bfloat16+remat": ("mixed_bfloat16", "block"),
    "remat_scope": ("float32", "scope"),  # opt-in (--settings): Keras per-layer remat, for comparison
    "mixed_bfloat16+remat_scope": ("mixed_bfloat16", "scope"),
}
DEFAULT_SETTINGS = ("float32", "mixed_bfloat16", "remat", "mixed_bfloat16+remat")
TARGET = 0.45  # issue #5: mixed precision + remat <= 45 % of float32, per sample
GIB = 1024 ** 3


# === Child: one configuration ===

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def patch_remat_autocast() -> None:
    """Keras 3.x / TF: re-enter the layer's autocast scope inside the rematerialised function.

    Without this, ``RematScope`` + ``mixed_bfloat16`` fails: `tf.recompute_grad` re-runs the layer's call in the
    backward pass outside the ``AutocastScope`` that ``Layer.__call__`` opened, so float32 kernels meet bfloat16
    inputs ("Input 'filter' of 'Conv3D' Op has type float32 that does not match type bfloat16").
    """
    from keras.src import backend
    from keras.src.layers.layer import Layer

    original = Layer.rematerialized_call

    def rematerialized_call(self, layer_call, *args, **kwargs):
        if self.compute_dtype != self.variable_dtype:
            inner = layer_call

            def layer_call(*a, **k):
                with backend.AutocastScope(self.compute_dtype):
                    return inner(*a, **k)
        return original(self, layer_call, *args, **kwargs)

    Layer.rematerialized_call = rematerialized_call


def layer_output_bytes(spec: dict) -> int:
    """Analytic activation memory: bytes of every layer output of the model at this input size and batch.

    Standard backprop keeps (about) these tensors for the backward pass, so this is a device-independent
    estimate of what mixed precision changes (bf16 outputs take 2 bytes instead of 4). Built as a second,
    static-shape copy of the model (``input_shape``) after the measurement.
    """
    import numpy as np

    from medtf.models import get_model

    s = spec["size"]
    model = get_model(spec["model"], **{**build_args(spec), "input_shape": (s, s, s)})
    total = 0
    for layer in model.layers:
        if layer.__class__.__name__ == "InputLayer":
            continue
        outputs = layer.output if isinstance(layer.output, (list, tuple)) else [layer.output]
        for out in outputs:
            total += spec["batch"] * int(np.prod(out.shape[1:])) * np.dtype(out.dtype).itemsize
    return total


def build_args(spec: dict) -> dict:
    return {**spec["model_args"], **({"remat": True} if spec["remat"] == "block" else {})}


def child(spec: dict) -> dict:
    import contextlib
    import gc

    import keras
    import numpy as np
    import tensorflow as tf

    from medtf.losses import get_loss
    from medtf.models import get_model
    from medtf.training.engine import build_optimizer

    keras.mixed_precision.set_global_policy(spec["precision"])
    if spec.get("autocast_fix"):
        patch_remat_autocast()
    keras.utils.set_random_seed(0)
    scope = keras.RematScope(mode="full") if spec["remat"] == "scope" else contextlib.nullcontext()
    with scope:
        model = get_model(spec["model"], **build_args(spec))
    if spec["remat"] == "scope":
        # RematScope("full") also marks the functional Model itself, and `tf.recompute_grad` around the whole
        # model call fails in graph mode ("custom_gradient ... keywords arguments only when eager execution is
        # enabled": the model is called with training=True). Keep remat on every layer, not on the model call.
        model._remat_mode = None
    model.compile(optimizer=build_optimizer({"learning_rate": 1e-3}), loss=get_loss(spec["loss"]),
                  jit_compile=False)
    b, s = spec["batch"], spec["size"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(b, s, s, s, 1)).astype("float32")
    y = (rng.random((b, s, s, s, 1)) < 0.05).astype("float32")
    gc.collect()
    rss_built = _status_kib("VmRSS")

    reset = _reset_peak()
    t0 = time.perf_counter()
    model.train_on_batch(x, y)  # warm-up: trace + optimizer slots
    warmup_s = time.perf_counter() - t0
    warmup_peak = _status_kib("VmHWM")
    gc.collect()
    rss_before = _status_kib("VmRSS")
    _reset_peak()
    bfc = os.environ.get("TF_CPU_ALLOCATOR_USE_BFC") == "true"
    if bfc:  # TF's own accounting of live tensors (what get_memory_info("GPU:0") reports on a GPU)
        tf.config.experimental.reset_memory_stats("CPU:0")
        tensors_before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    t0 = time.perf_counter()
    loss = model.train_on_batch(x, y)
    step_s = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    tensor_peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] if bfc else None
    activation_bytes = layer_output_bytes(spec)
    return {
        **spec, "params": int(model.count_params()), "rss_built_kib": rss_built, "rss_before_kib": rss_before,
        "step_peak_kib": peak, "warmup_peak_kib": warmup_peak,
        # memory held or touched by a steady-state step above the built model (what stays cached from the warm-up
        # step, e.g. in TF/oneDNN allocators, is part of what training needs):
        "step_kib": peak - rss_built if reset else None,
        "step_above_prestep_kib": peak - rss_before if reset else None,
        "warmup_step_kib": warmup_peak - rss_built if reset else None,
        "total_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "hwm_reset": reset,
        "layer_output_bytes": activation_bytes, "bfc_allocator": bfc,
        # peak bytes of live TF tensors during the step above those alive before it (weights, optimizer slots):
        "tensor_step_bytes": tensor_peak - tensors_before if bfc else None,
        "warmup_s": warmup_s, "step_s": step_s, "loss_value": float(np.asarray(loss).ravel()[0]),
    }


# === Parent: one fresh subprocess per configuration ===

def run_config(spec: dict, bfc: bool = False) -> dict:
    """Run one child; ``bfc``: with TF's BFC allocator on the CPU, which keeps tensor statistics (its pool
    changes RSS, so the RSS columns come from a separate child with the default allocator)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if bfc:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = "true"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-5:]
        return {**spec, "error": f"exit {proc.returncode}: " + " | ".join(tail), "wall_s": wall}
    return {**json.loads(lines[-1]), "wall_s": wall}


def model_config(path: Path) -> tuple[str, dict, str]:
    """(model name, args, loss name) of an experiment config (the brachy 3D U-Net by default)."""
    import yaml

    config = yaml.safe_load(path.read_text())
    return config["model"]["name"], dict(config["model"].get("args") or {}), config["loss"]["name"]


def fmt_gib(kib) -> str:
    return "n/a" if kib is None else f"{kib * 1024 / GIB:.2f}"


MEASURES = (("step_kib", "RSS step", 1024), ("tensor_step_bytes", "TF tensor peak", 1))  # key, label, bytes/unit


def report(results: list[dict], size: int) -> list[str]:
    """Markdown table + ratio lines per measure (also printed)."""
    lines = ["| setting | input | batch | RSS step: peak - built (GiB) | per sample | TF tensor peak (GiB) "
             "| per sample | total peak RSS (GiB) | layer outputs as built (GiB, analytic) | step s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['setting']} | {r['size']}^3 | {r['batch']} | failed: {r['error'][-90:]} |||||||")
            continue
        cells = []
        for key, _, unit in MEASURES:
            value = None if r.get(key) is None else r[key] * unit / 1024
            cells += [fmt_gib(value), fmt_gib(None if value is None else value / r["batch"])]
        lines.append(f"| {r['setting']} | {r['size']}^3 | {r['batch']} | {' | '.join(cells)} "
                     f"| {fmt_gib(r['total_peak_kib'])} | {fmt_gib(r['layer_output_bytes'] / 1024)} "
                     f"| {r['step_s']:.1f} |")
    lines.append("")
    batches = sorted({r["batch"] for r in results if r["size"] == size})
    for key, label, unit in MEASURES:
        ok = {(r["setting"], r["size"], r["batch"]): r[key] * unit for r in results
              if "error" not in r and r.get(key)}
        for b in batches:
            base = ok.get(("float32", size, b))
            ratios = [f"{name} {ok[(name, size, b)] / base:.2f}x" for name in SETTINGS if (name, size, b) in ok]
            if base and ratios:
                lines.append(f"- {label}, {size}^3, batch {b}, per sample vs float32: " + ", ".join(ratios))
        for name in SETTINGS:
            r1, r2 = ok.get((name, size, 1)), ok.get((name, size, 2))
            if r1 and r2:
                lines.append(f"- {label}, {name}: one more sample (B=2 minus B=1) {fmt_gib((r2 - r1) / 1024)} GiB; "
                             f"fixed part {fmt_gib((2 * r1 - r2) / 1024)} GiB")
        verdicts = []
        for b in batches:
            base, best = ok.get(("float32", size, b)), ok.get(("mixed_bfloat16+remat", size, b))
            if base and best:
                verdicts.append(f"batch {b}: {best / base:.2f} -> {'MET' if best / base <= TARGET else 'MISSED'}")
        if verdicts:
            lines.append(f"- {label}: target mixed_bfloat16+remat <= {TARGET:.0%} of float32 per sample: "
                         + "; ".join(verdicts))
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=128, help="cubic input size (default %(default)s)")
    parser.add_argument("--batches", default="1,2", help="comma-separated batch sizes (default %(default)s)")
    parser.add_argument("--patch-size", type=int, default=96, help="patch-training line; 0 to skip")
    parser.add_argument("--quick", action="store_true", help="batch 1 only, float32 and mixed+remat, no patch line")
    parser.add_argument("--settings", help=f"comma-separated subset of {list(SETTINGS)} "
                                           f"(default {','.join(DEFAULT_SETTINGS)})")
    parser.add_argument("--config", type=Path, default=ROOT / "experiments" / "brachy_unet3d.yaml",
                        help="experiment whose model/loss is measured (default %(default)s)")
    parser.add_argument("--model-args", type=json.loads, default={},
                        help='JSON overrides of the model arguments, e.g. \'{"norm": "batch"}\'')
    parser.add_argument("--no-autocast-fix", action="store_true",
                        help="run mixed_bfloat16+remat_scope without `patch_remat_autocast` (fails on Keras 3.x/TF)")
    parser.add_argument("--tensor-repeats", type=int, default=3,
                        help="children per configuration with the BFC allocator (TF tensor peak, median); 0: skip")
    parser.add_argument("--json", type=Path, help="also write all results as JSON here")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0

    name, model_args, loss = model_config(args.config)
    settings = args.settings.split(",") if args.settings else (
        ["float32", "mixed_bfloat16+remat"] if args.quick else list(DEFAULT_SETTINGS))
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    batches = [1] if args.quick else [int(b) for b in args.batches.split(",")]
    specs = [(s, args.size, b) for b in batches for s in settings]
    if args.patch_size and not args.quick:
        specs += [(s, args.patch_size, 1) for s in ("float32", "mixed_bfloat16+remat")]
    model_args = {**model_args, **args.model_args}
    print(f"model {name} {model_args}, loss {loss}; {len(specs)} configurations, one subprocess each; "
          f"{os.cpu_count()} CPUs, {platform.platform()}", flush=True)
    results = []
    for setting, size, batch in specs:
        precision, remat = SETTINGS[setting]
        spec = dict(setting=setting, precision=precision, remat=remat, size=size, batch=batch, model=name,
                    model_args={**model_args, **args.model_args}, loss=loss,
                    autocast_fix=remat == "scope" and precision.startswith("mixed") and not args.no_autocast_fix)
        r = run_config(spec)
        if "error" not in r and args.tensor_repeats > 0:
            # The tensor peak depends on the order in which TF's executor runs independent ops (2 threads here),
            # so it varies between runs (seen: +-8 %); report the median of a few fresh children.
            runs = [run_config(spec, bfc=True) for _ in range(args.tensor_repeats)]
            values = sorted(t["tensor_step_bytes"] for t in runs if t.get("tensor_step_bytes"))
            r["tensor_step_bytes_all"] = values
            r["tensor_step_bytes"] = values[len(values) // 2] if values else None
            r["tensor_error"] = next((t["error"] for t in runs if "error" in t), None)
            r["wall_s"] += sum(t["wall_s"] for t in runs)
        results.append(r)
        tensor = " / ".join(fmt_gib(v / 1024) for v in r.get("tensor_step_bytes_all") or []) or "n/a"
        msg = r.get("error") or (f"RSS step {fmt_gib(r['step_kib'])} GiB, TF tensor peak {tensor} GiB, "
                                 f"total peak {fmt_gib(r['total_peak_kib'])} GiB, step {r['step_s']:.1f} s")
        print(f"[{setting:>22s} {size}^3 b{batch}] {msg} (wall {r['wall_s']:.0f} s)", flush=True)
    print()
    print("\n".join(report(results, args.size)))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
