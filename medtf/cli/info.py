"""``medtf info``: the machine facts a user or a support request needs.

CPU model and features (AVX2 / AVX-512 / AMX / native bfloat16), whether TensorFlow runs oneDNN kernels, the CPUs
this process may use (SLURM ``--cpus-per-task``, cgroup quota, affinity) and the thread pools sized from them,
GPUs, what ``train.precision: auto`` would pick here, and the versions of the stack.
"""

from __future__ import annotations

import argparse
import json


def register(commands) -> None:
    p = commands.add_parser("info", help="CPU, oneDNN, usable cores, GPUs, precision and package versions",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of aligned text")
    p.set_defaults(handler=run)


def run(args) -> int:
    from medtf import runtime

    facts = runtime.info()
    print(json.dumps(facts, indent=2) if args.json else runtime.format_info(facts))
    return 0
