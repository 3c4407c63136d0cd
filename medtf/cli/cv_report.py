"""``medtf cv-report RUN_DIR``: mean ± sd and 95% CI per metric over the ``fold_*`` runs of a cross-validation.

Any task: each fold is evaluated by its run's task (segmentation Dice/HD95, classification AUC ..., contrastive
retrieval) and every number of its summary.json is aggregated.

For folds trained elsewhere, typically a SLURM array (one task per fold); as a dependent job::

    array=$(medtf slurm experiments/lgg_unet2d.yaml --array 0-4 --submit --run-dir runs/lgg-cv)
    medtf slurm run --submit --after "$array" --run-dir runs/lgg-cv -- cv-report runs/lgg-cv --evaluate
"""

from __future__ import annotations

import argparse
import sys


def register(commands) -> None:
    p = commands.add_parser("cv-report", help="aggregate the fold_* runs of a cross-validation (mean ± sd)",
                            description=__doc__ + "\nWrites RUN_DIR/cv_report.json and cv_report.csv (per metric: "
                                                  "every fold's value, mean, sample sd, 95% CI of the mean, n).\n"
                                                  "Exits 1 when a fold is missing, unfinished or not evaluated: it "
                                                  "is listed, never silently left out of the count.",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder holding fold_0 .. fold_{K-1}")
    p.add_argument("--folds", type=int, default=None, metavar="K",
                   help="expected number of folds (default: the manifest of the runs' data.dir)")
    p.add_argument("--evaluate", action="store_true",
                   help="first evaluate finished folds without an up-to-date evaluation (their fold-k split)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap of --evaluate (segmentation)")
    p.add_argument("--data-dir", default=None,
                   help="shard folder, when it moved since training (default: the runs' data.dir)")
    p.add_argument("--all", dest="all_metrics", action="store_true", help="print every metric (counts, volumes)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from medtf.data.manifest import ManifestError
    from medtf.training.config import ConfigError
    from medtf.training.folds import aggregate_folds, evaluate_folds, format_report

    try:
        if args.evaluate:
            folds = args.folds or aggregate_folds(args.run_dir, write=False, data_dir=args.data_dir)["folds"]
            evaluate_folds(args.run_dir, folds, overlap=args.overlap, data_dir=args.data_dir)
            from medtf.training.cv_transfer import evaluate_scratch

            evaluate_scratch(args.run_dir, folds)  # a transfer chain's scratch baselines (nothing otherwise)
        report = aggregate_folds(args.run_dir, args.folds, data_dir=args.data_dir)
        from medtf.training.cv_transfer import with_scratch_metrics

        report = with_scratch_metrics(report, args.run_dir)  # a transfer chain's CV: its scratch runs too
    except (FileNotFoundError, ManifestError, ConfigError, ValueError) as exc:
        print(f"medtf cv-report: {exc}", file=sys.stderr)
        return 2
    print(format_report(report, all_metrics=args.all_metrics))
    print(f"wrote {args.run_dir}/cv_report.json and cv_report.csv")
    return 0 if report["complete"] else 1
