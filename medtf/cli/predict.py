"""``medtf predict MODEL --input PATH --output DIR``: sliding-window segmentation with an exported model.

MODEL is a folder written by `medtf export` (its highest version) or one version folder. The input is a DICOM
series folder, a NIfTI/MHA/MHD/NRRD volume (3D models) or a PNG/TIFF slice (2D models). A 3D input is reoriented
and resampled (linear) to the training data's orientation and median spacing recorded in medtf.json, predicted
there, and its probabilities are resampled (linear) back onto the input grid before the threshold. Writes
mask.nii.gz on the input grid (its exact shape, spacing, origin and direction), seg.dcm (DICOM SEG referencing the
series; DICOM input only), overlay PNGs and prediction.json.
With --reconstruct (brachy-ct models on a DICOM CT) the catheters are reconstructed from the mask as by
`medtf reconstruct`: catheters.json, RP.reconstructed.dcm and reconstruction.json (matched against --plan if given).
Lesion classifiers (models trained on prostate-mpmri or lung-nodules crops) take a study folder (a PROSTATEx
patient folder, or a lung CT DICOM folder) plus --lesions FILE (prostate: CSV with x,y,z in mm LPS or i,j,k T2
voxel indices, optional lesion id; lung: the LUNGx nodule CSV) and write lesions.csv, prediction.json and an
overlay PNG per lesion crop with its score; the crops are the converter's (`medtf.tasks.lesions` lists the columns).
An input unlike the training data (modality, voxel spacing, size, intensities; the fingerprint `medtf export` stores
in medtf.json) is predicted all the same, with a warning on stderr and in prediction.json's "warnings".
"""

from __future__ import annotations

import sys


def register(commands) -> None:
    p = commands.add_parser("predict", help="segment an image/series with an exported model",
                            description=__doc__)
    p.add_argument("model", metavar="MODEL", help="exported model folder or version folder")
    p.add_argument("--input", required=True, help="DICOM series folder, NIfTI/MHD volume or PNG/TIFF image")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (default %(default)s)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the model's)")
    p.add_argument("--probabilities", action="store_true", help="also write probabilities.nii.gz")
    p.add_argument("--overlays", type=int, default=3, help="overlay PNG slices for 3D inputs (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="patches per model call (default %(default)s)")
    p.add_argument("--series-uid", default=None, help="series to use when the folder holds several")
    p.add_argument("--reconstruct", action="store_true",
                   help="brachytherapy catheter models on a DICOM CT: also write catheters.json, RP.reconstructed.dcm "
                        "and reconstruction.json (as `medtf reconstruct`)")
    p.add_argument("--tta", action="store_true",
                   help="classification models: average over flips and quarter turns (the predict_tta signature)")
    p.add_argument("--lesions", default=None, metavar="FILE",
                   help="lesion classifiers (prostate-mpmri / lung-nodules models): CSV of lesion coordinates in "
                        "the study given as --input. prostate: columns x,y,z (mm, patient LPS; or pos 'x y z') or "
                        "i,j,k (0-based transverse-T2 voxel; or ijk 'i j k'), optional lesion (id) and ProxID; "
                        "lung: the LUNGx nodule CSV (Scan Number, Nodule Number, Nodule Center x,y Position, "
                        "Nodule Center Image; Diagnosis not needed)")
    p.add_argument("--plan", default=None, help="with --reconstruct: the original RT Plan to match against")
    p.set_defaults(handler=run)


def _reconstruct_problem(args) -> str | None:
    """Why --reconstruct/--plan cannot apply to this model and input (None when they can), before predicting."""
    import json
    from pathlib import Path

    from medtf.export.layout import METADATA_FILE, ExportError, resolve_model_dir

    if not args.reconstruct:
        return "--plan needs --reconstruct" if args.plan else None
    try:
        kind = json.loads((resolve_model_dir(args.model) / METADATA_FILE).read_text(encoding="utf-8")).get("kind")
    except (ExportError, OSError, ValueError):
        return None  # predict_path reports the unreadable model
    if kind != "brachy-ct":
        return f"--reconstruct is for brachytherapy catheter models (kind brachy-ct), this model's kind is {kind}"
    if not Path(args.input).is_dir():
        return "--reconstruct needs a DICOM CT series folder as --input (the RT Plan is attached to the CT)"
    return None


def run(args) -> int:
    from medtf.export import ExportError
    from medtf.export.predict import predict_path
    from medtf.io import InputError

    problem = _reconstruct_problem(args)
    if problem:
        print(f"medtf predict: {problem}", file=sys.stderr)
        return 2
    from medtf.tasks import get_task, task_of_model

    task = task_of_model(args.model)
    if args.lesions and task != "classification":
        print(f"medtf predict: --lesions is for lesion classifiers (prostate-mpmri / lung-nodules models); this "
              f"is a {task} model", file=sys.stderr)
        return 2
    if task != "segmentation":  # the model's task writes its own outputs (medtf.tasks)
        try:
            extra = {"lesions": args.lesions} if args.lesions else {}
            summary = get_task(task).predict(args.model, args.input, args.output, threshold=args.threshold,
                                             tta=args.tta, **extra)
        except (ExportError, InputError, ValueError) as exc:
            print(f"medtf predict: {exc}", file=sys.stderr)
            return 2
        failed = [r for r in summary["predictions"] if r.get("status") == "failed"]
        for r in failed:  # a bad lesion row fails alone; the others are predicted
            print(f"medtf predict: lesion {r['lesion']}: {r['error']}", file=sys.stderr)
        done = len(summary["predictions"]) - len(failed)
        print(f"predicted {done} {'lesion(s)' if args.lesions else 'input(s)'} ({task})"
              f"{f', {len(failed)} failed' if failed else ''} -> {args.output}")
        return 0 if done else 2
    if args.tta:
        print("medtf predict: --tta is for classification models; segmentation models average flips with "
              "`medtf evaluate --tta` (or medtf.inferers.flip_tta)", file=sys.stderr)
        return 2
    try:
        summary = predict_path(args.model, args.input, args.output, overlap=args.overlap, threshold=args.threshold,
                               probabilities=args.probabilities, overlays=args.overlays, batch_size=args.batch_size,
                               series_uid=args.series_uid)
    except (ExportError, InputError, ValueError) as exc:
        print(f"medtf predict: {exc}", file=sys.stderr)
        return 2
    size = (f"{summary['volume_ml']:.3f} mL" if "volume_ml" in summary else f"{summary['area_mm2']:.1f} mm^2")
    print(f"predicted {summary['voxels']} foreground voxels ({size}) -> {args.output}")
    for note in summary["notes"]:
        print(f"  note: {note}")
    for warning in summary["warnings"]:  # the input differs from the training data (medtf.export.fingerprint)
        print(f"medtf predict: WARNING: input unlike the model's training data: {warning}", file=sys.stderr)
    if args.reconstruct:
        from medtf.rt.reconstruct_case import format_report, reconstruct_case

        try:
            report = reconstruct_case(args.output, args.input, args.output, plan=args.plan,
                                      series_uid=args.series_uid)
        except (InputError, ValueError) as exc:
            print(f"medtf predict: {exc}", file=sys.stderr)
            return 2
        print(format_report(report))
    return 0
