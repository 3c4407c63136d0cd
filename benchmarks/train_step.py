"""Issue #11: training step time of the demo and brachy 3D U-Nets, float32 / mixed_bfloat16, oneDNN on / off.

Why: TensorFlow enables oneDNN by default only on CPUs with AVX-512 VNNI/BF16 or AMX; medtf enables it on every
x86-64 CPU (medtf/runtime.py). This measures what that is worth, and whether bf16 pays off on this CPU (it is
emulated without AVX-512 BF16 / AMX, which is why ``train.precision: auto`` picks float32 there).

Each (model, precision, oneDNN) setting runs in a FRESH interpreter (TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS``
once, at import): build the model from the experiment's config (`medtf.models.get_model`), compile with AdamW and
the experiment's loss, run ``--warmup`` ``train_on_batch`` calls (tracing, oneDNN primitive caches), then time
``--steps`` more; the median is reported. Inputs are random tensors of the experiment's patch size and batch size:
the step, not the input pipeline, is measured. The "baseline" is TensorFlow's own default (oneDNN off on this CPU
unless it has AVX-512 VNNI/BF16 or AMX), which is what a user gets without medtf's default.

Usage (repository root)::

    .venv/bin/python benchmarks/train_step.py                    # demo + brachy, float32 + bf16, oneDNN on + off
    .venv/bin/python benchmarks/train_step.py --models demo --precisions float32 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The two models of issue #11: the demo's scaled-down network and the full experiment (experiments/brachy_unet3d.yaml).
MODELS = {
    "demo": {"depth": 3, "base_filters": 8},
    "brachy": {"depth": 4, "base_filters": 16},
}


def experiment() -> dict:
    from medtf.training.config import load_config

    return load_config(ROOT / "experiments" / "brachy_unet3d.yaml", [])


def child(model_name: str, precision: str, warmup: int, steps: int) -> dict:
    """One setting, in this (fresh) process: median seconds per training step."""
    import medtf  # noqa: F401  (sets the oneDNN default unless the parent set TF_ENABLE_ONEDNN_OPTS)
    import keras
    import numpy as np

    from medtf.losses import get_loss
    from medtf.models import get_model
    from medtf.runtime import onednn_enabled

    config = experiment()
    model_cfg = config["model"]
    args = dict(model_cfg.get("args") or {}, **MODELS[model_name])
    batch = int(config["data"]["batch_size"])
    size = list(config["data"]["patch_size"]["size"])
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    model = get_model(model_cfg["name"], **args)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=1e-4),
                  loss=get_loss(config["loss"]["name"], **dict(config["loss"].get("args") or {})))
    rng = np.random.default_rng(0)
    x = rng.random((batch, *size, 1), dtype=np.float32)
    y = (rng.random((batch, *size, 1)) < 0.05).astype(np.float32)
    for _ in range(warmup):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    return {"model": model_name, "precision": precision, "onednn": onednn_enabled(),
            "step_s": float(np.median(times)), "min_s": float(np.min(times)), "steps": steps,
            "batch": batch, "patch": size, "params": int(model.count_params())}


def run_setting(model: str, precision: str, onednn: str, warmup: int, steps: int) -> dict:
    env = dict(os.environ)
    if onednn == "default":
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)
        # TensorFlow's own default, which medtf's import would override: import TensorFlow before medtf.
        env["MEDTF_BENCH_TF_DEFAULT"] = "1"
    else:
        env["TF_ENABLE_ONEDNN_OPTS"] = onednn
    out = subprocess.run([sys.executable, __file__, "--child", model, precision, str(warmup), str(steps)],
                         env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{model}/{precision}/oneDNN={onednn} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--precisions", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--onednn", nargs="+", default=["default", "1"], choices=["default", "0", "1"],
                        help="'default' = TensorFlow's own choice (medtf's default not applied); 1/0 forced")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if os.environ.get("MEDTF_BENCH_TF_DEFAULT"):
            import tensorflow  # noqa: F401  (first, so medtf's import leaves TensorFlow's default alone)
        model, precision, warmup, steps = args.child
        print(json.dumps(child(model, precision, int(warmup), int(steps))))
        return 0

    from medtf.runtime import cpu_info, usable_cores

    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({', '.join(cpu['flags'])}); usable cores {usable_cores()[0]}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    for model in args.models:
        for precision in args.precisions:
            for onednn in args.onednn:
                row = run_setting(model, precision, onednn, args.warmup, args.steps)
                row["setting"] = onednn
                rows.append(row)
                print(f"  {model:7s} {precision:15s} oneDNN {onednn:7s} (on: {row['onednn']!s:5s}) "
                      f"{row['step_s']:.3f} s/step (min {row['min_s']:.3f})", flush=True)
    print("\n| model (batch x patch) | precision | TF default s/step | oneDNN on s/step | speed-up |")
    print("|---|---|---|---|---|")
    for model in args.models:
        for precision in args.precisions:
            by = {r["setting"]: r for r in rows if r["model"] == model and r["precision"] == precision}
            base, fast = by.get("default") or by.get("0"), by.get("1")
            if base and fast:
                shape = f"{fast['batch']} x {'x'.join(map(str, fast['patch']))}"
                print(f"| {model} ({shape}) | {precision} | {base['step_s']:.3f} (oneDNN {base['onednn']}) | "
                      f"{fast['step_s']:.3f} | {base['step_s'] / fast['step_s']:.1f}x |")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
