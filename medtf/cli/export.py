"""``medtf export RUN_DIR``: a training run's checkpoint -> TF Serving SavedModel taking raw images.

Writes ``OUTPUT/NAME/VERSION/`` (``saved_model.pb``, ``variables/``, ``medtf.json``); the version is the next free
integer unless ``--version`` is given, and an existing version is never overwritten.
"""

from __future__ import annotations

import sys


def register(commands) -> None:
    p = commands.add_parser("export", help="export a run's checkpoint as a TF Serving SavedModel",
                            description=__doc__)
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `medtf train`")
    p.add_argument("--checkpoint", default="best",
                   help="best, last, or a path to a .keras file (default %(default)s)")
    p.add_argument("--output", default=None, help="base folder (default RUN_DIR/export)")
    p.add_argument("--version", type=int, default=None, help="version number (default: next free one)")
    p.add_argument("--name", default=None, help="model name (default: the config's model.name)")
    p.add_argument("--threshold", type=float, default=0.5, help="default decision threshold (default %(default)s)")
    p.add_argument("--tta-shift", type=int, default=0, metavar="PIXELS",
                   help="classification: the predict_tta signature also averages 4 shifts by PIXELS (default: "
                        "flips and quarter turns only)")
    p.add_argument("--data-dir", default=None,
                   help="the training shards, whose fingerprint (modality, spacing, size, intensities) medtf.json "
                        "records for predict's out-of-distribution warnings (default: the run config's data.dir)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from medtf.export import ExportError
    from medtf.tasks import get_task, task_of_run

    task = task_of_run(args.run_dir)
    if args.tta_shift and task != "classification":
        print(f"medtf export: --tta-shift is for classification runs; this run's task is {task}", file=sys.stderr)
        return 2
    try:  # the run's task decides the signatures (medtf.tasks)
        path = get_task(task).export(args.run_dir, checkpoint=args.checkpoint, output=args.output,
                                     version=args.version, name=args.name, threshold=args.threshold,
                                     data_dir=args.data_dir,
                                     **({"tta_shift": args.tta_shift} if args.tta_shift else {}))
    except (ExportError, ValueError) as exc:
        print(f"medtf export: {exc}", file=sys.stderr)
        return 2
    print(f"exported {path}")
    print(f"  tensorflow_model_server --model_name={path.parent.name} --model_base_path={path.parent.resolve()}")
    return 0
