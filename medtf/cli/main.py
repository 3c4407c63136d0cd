"""The ``medtf`` command: one entry point for the whole path from raw scans to models and predictions.

    medtf synth KIND --out DIR [--cases N] [--seed S]       realistic synthetic data in a real layout
    medtf convert KIND --input DIR --output DIR [...]       raw layout -> verified, de-identified TFRecords
    medtf inspect DIR                                       manifest summary + preview PNGs
    medtf verify DIR                                        re-read and check every shard (non-zero exit on problems)
    medtf train CONFIG [--set key=value ...] --run-dir DIR  train from an experiment config
    medtf train CONFIG --run-dir DIR --folds K              K-fold cross-validation (+ cv_report.json)
    medtf cv-report RUN_DIR                                 mean ± sd over fold_* runs (e.g. of a SLURM array)
    medtf evaluate RUN_DIR [--split test]                   per-case metrics on whole volumes (sliding window)
    medtf export RUN_DIR                                    SavedModel in a TF Serving layout
    medtf predict MODEL --input PATH --output DIR           NIfTI mask, DICOM SEG, overlays
    medtf reconstruct MASK --ct DIR [--plan RP] --output D  catheters -> JSON + RT Plan (+ match report in mm)
    medtf slurm CONFIG [--nodes N ...] [--submit]           render / submit a SLURM job
    medtf tune CONFIG --tune-dir DIR [--set key=value ...]  keras-tuner search over the config's tune section
    medtf data-service dispatcher|worker [...]              tf.data service: augmentation on CPU-only workers
    medtf roulette CONFIG --candidates N --out DIR          best of N seeded initialisations on the val split
    medtf demo [--out DIR]                                  the built-in end-to-end job
    medtf info [--json]                                     CPU features, oneDNN, usable cores, GPUs, versions

Any command takes --quiet (no progress bars/lines) and --verbose (TensorFlow's start-up and C++ log lines,
hidden by default); `medtf COMMAND --help` describes each command.

Errors: a user mistake (a bad config key or value, a missing file or folder, a shard folder without a manifest,
an unreadable input, a diverging training) is one line on stderr, "medtf COMMAND: what and where", exit code 2.
--debug (anywhere) shows the Python traceback instead. Anything else is a bug in medtf: its traceback is printed,
followed by one line saying so, exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from medtf import __version__
from medtf.cli.output import add_global_flags, clean_help_texts, with_global_flags

# Sub-commands that live in their own module: each exposes ``register(commands)``, which adds its parser and sets
# ``handler=<function(args) -> exit code>`` as a default, so main.py does not grow with every command.
COMMAND_MODULES: tuple[str, ...] = ("medtf.cli.evaluate", "medtf.cli.export", "medtf.cli.predict",
                                     "medtf.cli.slurm", "medtf.cli.tune", "medtf.cli.cv_report", "medtf.cli.info",
                                     "medtf.cli.check", "medtf.cli.reconstruct", "medtf.cli.roulette",
                                     "medtf.cli.data_service")

SYNTH_KINDS = {
    "brachy-ct": ("medtf.synth.brachy_ct", "generate_brachy_ct",
                  "CT series + brachytherapy RT Plan per patient (catheters visible in the CT)"),
    "lgg-mri": ("medtf.synth.lgg_mri", "generate_lgg_mri",
                "Kaggle lgg-mri-segmentation layout: TCGA folders of RGB TIFF slices + masks"),
    "prostate-mpmri": ("medtf.synth.prostate_mpmri", "generate_prostate_mpmri",
                       "PROSTATEx layout: T2/DWI/ADC DICOM series per patient + findings CSVs"),
    "nuclei-he": ("medtf.synth.nuclei_he", "generate_nuclei_he",
                  "PanNuke fold (.npy) and CoNSeP-style (PNG + .mat) H&E tiles with nucleus instances"),
    "mri-reports": ("medtf.synth.mri_reports", "generate_mri_reports",
                    "one NIfTI folder per case (DWI, T2*, FLAIR) + reports.csv with radiology text"),
    "image-folders": ("medtf.synth.image_folders", "generate_image_folders",
                      "Kaggle brain-tumour layout: yes/ and no/ folders of brain MRI slices (--cases per class)"),
    "lung-nodules": ("medtf.synth.lung_nodules", "generate_lung_nodules",
                     "LUNGx layout: a DICOM CT series per scan + the nodule CSV (centre x, y, image number, diagnosis)"),
}


def _build_parser() -> argparse.ArgumentParser:
    from tfrecords_builder import CONVERTERS, get_converter
    from tfrecords_builder.engine import add_common_arguments

    parser = argparse.ArgumentParser(
        prog="medtf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"medtf {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of one line (may go anywhere)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    synth = commands.add_parser("synth", help="write realistic synthetic data in a source layout",
                                description="Write synthetic data in exactly the layout `medtf convert` reads.")
    synth.add_argument("kind", choices=sorted(SYNTH_KINDS), help="; ".join(f"{k}: {v[2]}" for k, v in SYNTH_KINDS.items()))
    synth.add_argument("--out", required=True, help="destination folder")
    synth.add_argument("--cases", type=int, default=4, help="number of patients (default %(default)s)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")

    convert = commands.add_parser("convert", help="convert a source layout into sharded TFRecords",
                                  description="Convert raw data into sharded, verified, de-identified TFRecords "
                                              "with patient-level splits and a manifest.json.")
    kinds = convert.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind in sorted(CONVERTERS):
        converter = get_converter(kind)
        module = sys.modules[converter.__module__]
        sub = kinds.add_parser(kind, help=(module.__doc__ or "").strip().splitlines()[0],
                               description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_common_arguments(sub)
        converter.add_arguments(sub)
        sub.set_defaults(converter=converter)

    inspect = commands.add_parser("inspect", help="summarise a shard folder and write preview PNGs",
                                  description="Print a shard folder's manifest summary (splits, patients, examples, "
                                              "failures) and write preview PNGs of a few examples.")
    inspect.add_argument("folder", help="shard folder written by `medtf convert` (holds manifest.json)")
    inspect.add_argument("--previews", default=None, help="where to write previews (default FOLDER/previews)")
    inspect.add_argument("--no-previews", action="store_true", help="only print the summary")

    verify = commands.add_parser("verify", help="re-read every record and check it against the manifest",
                                 description="Re-read every shard of a folder and check it against manifest.json "
                                             "(sha256, sizes, records decode to their shapes, counts, no patient "
                                             "in two splits); prints each problem and exits 1 when there is one.")
    verify.add_argument("folder", help="shard folder written by `medtf convert` (holds manifest.json)")

    train = commands.add_parser("train", help="train a model from an experiment config",
                                description="Train from an experiment YAML (see experiments/) with dotted "
                                            "overrides; the run directory gets the resolved config, TensorBoard "
                                            "logs, history.csv, best/last checkpoints and a resumable backup.")
    train.add_argument("config", help="experiment YAML file")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    train.add_argument("--run-dir", required=True, help="run directory (re-running the same one resumes)")
    train.add_argument("--init-from", default=None, metavar="PATH",
                       help="start from these weights (a .keras checkpoint such as `medtf roulette`'s best.keras, "
                            "a .weights.h5 or a run directory): the same as --set model.init_from=PATH")
    train.add_argument("--folds", type=int, default=None, metavar="K",
                       help="K-fold cross-validation on a `convert --folds K` shard folder: train fold 0..K-1 into "
                            "RUN_DIR/fold_k, evaluate each on its held-out fold, write RUN_DIR/cv_report.{json,csv} "
                            "(K must equal the manifest's number of folds)")

    demo = commands.add_parser("demo", help="run the built-in end-to-end job on synthetic data",
                               description="The whole path on synthetic brachytherapy CTs: synth -> convert -> "
                                           "train -> evaluate -> export -> predict, in one working folder.")
    demo.add_argument("--out", default="demo_out", help="working folder (default %(default)s)")
    demo.add_argument("--cases", type=int, default=10, help="synthetic patients (default %(default)s)")
    demo.add_argument("--seed", type=int, default=0,
                      help="random seed of the data and training (default %(default)s)")

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    add_global_flags(parser)  # --quiet / --verbose after any (sub-)command
    clean_help_texts(parser)  # descriptions come from RST docstrings
    return parser


def _synth(args) -> int:
    module, func, _ = SYNTH_KINDS[args.kind]
    folders = getattr(importlib.import_module(module), func)(args.out, cases=args.cases, seed=args.seed)
    print(f"wrote {len(folders)} synthetic {args.kind} cases under {args.out}")
    if args.kind == "nuclei-he":  # two layouts with different class ids: each converts on its own
        print(f"  convert each layout separately: --input {args.out}/pannuke and --input {args.out}/consep")
    return 0


def _convert(args) -> int:
    from medtf.data.preview import write_previews
    from tfrecords_builder.engine import EXIT_INPUTS_FAILED, EXIT_OK, run_from_options

    code = run_from_options(args.converter, args)
    shards = code in (EXIT_OK, EXIT_INPUTS_FAILED)  # failed inputs: the shards hold the other cases
    if shards and (args.merge or args.num_tasks is None):  # a task (--num-tasks) writes no shards to preview
        for path in write_previews(args.output):
            print(f"preview: {path}")
    return code


def _inspect(args) -> int:
    from medtf.data.preview import summarize, write_previews

    print(summarize(args.folder))
    if not args.no_previews:
        for path in write_previews(args.folder, args.previews):
            print(f"preview: {path}")
    return 0


def _verify(args) -> int:
    from medtf.data.verify import verify_dataset

    report = verify_dataset(args.folder)
    for problem in report.problems:
        print(f"PROBLEM {problem}", file=sys.stderr)
    state = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
    print(f"{report.folder}: {report.num_examples} examples in {report.num_shards} shards: {state}")
    return 0 if report.ok else 1


def _train(args) -> int:
    from medtf.training.engine import train
    from medtf.training.experiment import load_experiment

    if args.init_from:
        args.overrides = [*args.overrides, f"+model.init_from={args.init_from}"]
    if args.folds is not None:
        return _train_folds(args)
    config = load_experiment(args.config, args.overrides)  # every key and value checked before anything runs
    if config.transfer is not None:
        return _train_transfer(config, args.run_dir)
    result = train(config, args.run_dir)
    last = {k: v[-1] for k, v in result["history"].items() if v}
    print(f"run {args.run_dir}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(last.items())))
    print(f"tensorboard --logdir {result['logs']}")
    return 0


def _train_transfer(config, run_dir) -> int:
    from medtf.training.transfer import run_transfer

    if config.data.fold is not None:  # one fold of a chain's cross-validation (a SLURM array task): as --folds does
        from medtf.training.cv_transfer import fold_transfer_experiment
        from medtf.training.folds import manifest_folds

        k, target = config.data.fold, config.data.dir
        config = fold_transfer_experiment(config.replace(data=config.data.replace(fold=None, folds=None)), k,
                                          config.data.folds or manifest_folds(target))
    summary = run_transfer(config, run_dir)
    if "preempted" in summary:
        print(f"phase {summary['preempted']} was preempted: re-run the same command to resume", file=sys.stderr)
        return 0
    for record in [*summary["phases"], *([summary["scratch"]] if summary["scratch"] else [])]:
        best = "n/a" if record["best"] is None else f"{record['best']:.4f}"
        print(f"phase {record['name']}: best {record['monitor']} {best} ({record['epochs']} epochs)")
    if "gain_over_scratch" in summary:
        print(f"final phase vs scratch: {summary['gain_over_scratch']:+.4f} {summary['phases'][-1]['monitor']}")
    print(f"wrote {run_dir}/transfer.json; the final model is {run_dir}/checkpoints/best.keras")
    return 0


def _train_folds(args) -> int:
    from medtf.training.experiment import load_experiment
    from medtf.training.folds import format_report, run_cross_validation

    config = load_experiment(args.config, args.overrides)
    if config.transfer is not None:  # the whole chain per fold, the last phase's data folded
        from medtf.training.cv_transfer import run_transfer_cross_validation

        report = run_transfer_cross_validation(config, args.run_dir, folds=args.folds)
    else:
        report = run_cross_validation(config, args.run_dir, folds=args.folds)
    print(format_report(report))
    if report.get("preempted") is not None:
        print(f"fold {report['preempted']} was preempted: re-run the same command to resume", file=sys.stderr)
        return 0
    print(f"wrote {args.run_dir}/cv_report.json and cv_report.csv")
    return 0 if report["complete"] else 1


def _demo(args) -> int:
    from medtf.cli.demo import run_demo

    return run_demo(args.out, cases=args.cases, seed=args.seed)


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean a user mistake, not a bug: one line and exit code 2 (see the module docstring).

    Their messages name the key, file or folder at fault. ``FileNotFoundError`` is here because medtf only opens
    paths a user gave (or that a user-given config or run directory names).
    """
    from medtf.data.manifest import ManifestError
    from medtf.io import InputError
    from medtf.training.config import ConfigError
    from tfrecords_builder.engine import ConversionError

    errors = [ConfigError, ManifestError, InputError, ConversionError, FileNotFoundError, NotADirectoryError]
    for module, name in (("medtf.export.layout", "ExportError"), ("medtf.training.engine", "NonFiniteLossError"),
                         ("medtf.data.service", "DataServiceError")):
        if module in sys.modules:  # imported by the command that may raise it; else it cannot have been raised
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def _strip_debug(argv) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (anywhere before a ``--``, after which a wrapped command starts), and whether
    it was there."""
    argv = [str(a) for a in argv]
    end = argv.index("--") if "--" in argv else len(argv)
    own = [a for a in argv[:end] if a != "--debug"]
    return own + argv[end:], len(own) < end


@with_global_flags  # --quiet, --verbose, TensorFlow start-up lines filtered (medtf/cli/output.py)
def main(argv=None) -> int:
    import traceback

    argv, debug = _strip_debug(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(argv)
    handlers = {"synth": _synth, "convert": _convert, "inspect": _inspect, "verify": _verify, "train": _train,
                "demo": _demo}
    handler = getattr(args, "handler", None) or handlers[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"medtf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, user_errors()):
            print(f"medtf {args.command}: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
        traceback.print_exc()
        print(f"medtf {args.command}: unexpected {type(exc).__name__}: this is a bug in medtf, not a mistake in "
              f"what you gave it; please report it with the traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
