"""``medtf evaluate RUN_DIR``: per-case Dice / HD95 / surface distance (and catheter metrics) of a trained run."""

from __future__ import annotations

import sys


def register(commands) -> None:
    p = commands.add_parser("evaluate", help="evaluate a trained run on a split (per-case metrics in mm)",
                            description="Predict every image/volume of a split with sliding-window inference and "
                                        "write per_case.csv and summary.json (Dice, HD95, mean surface distance; "
                                        "catheter matching for brachy-ct; tumour-slice Dice for lgg-mri).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `medtf train`")
    p.add_argument("--split", default="test", help="split to evaluate (default %(default)s)")
    p.add_argument("--checkpoint", default="best", help="best, last or a .keras path (default %(default)s)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default %(default)s)")
    p.add_argument("--output", default=None, help="output folder (default RUN_DIR/eval-SPLIT)")
    p.add_argument("--data-dir", default=None, help="shard folder (default: the run config's data.dir)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: segmentation averages the flips of every axis (mapped back), "
                        "classification the 8 in-plane flips/quarter turns (the thesis's enhanced prediction)")
    p.add_argument("--tta-shift", type=int, default=0, metavar="PIXELS",
                   help="classification with --tta: also average 4 shifts by PIXELS (default %(default)s: none)")
    p.add_argument("--projector", action="store_true",
                   help="nucleus_classification: also write the nucleus tokens of the split as a TensorBoard "
                        "projector folder OUTPUT/projector (tensorboard --logdir it, tab Projector)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from medtf.data.manifest import ManifestError
    from medtf.tasks import get_task, task_of_run
    from medtf.training.config import ConfigError

    try:  # the run's task evaluates (segmentation: per-case Dice/HD95; classification: AUC ... with CIs)
        task = task_of_run(args.run_dir)
        if args.projector and task != "nucleus_classification":
            raise ValueError(f"--projector exports nucleus tokens: {args.run_dir} is a {task!r} run, not a "
                             f"nucleus_classification one")
        get_task(task).evaluate(args.run_dir, split=args.split, checkpoint=args.checkpoint, overlap=args.overlap,
                                output=args.output, data_dir=args.data_dir, tta=args.tta,
                                **({"tta_shift": args.tta_shift} if args.tta_shift else {}),
                                **({"projector": True} if args.projector else {}))
    except (FileNotFoundError, ManifestError, ConfigError, ValueError) as exc:
        print(f"medtf evaluate: {exc}", file=sys.stderr)
        return 2
    return 0
