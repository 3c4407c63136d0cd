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
Image-report (contrastive) models take an mri-reports case folder (one NIfTI per sequence, stacked as the converter
does), a folder of them, or images, and write embeddings.npy and prediction.json: per input the top-k training
reports (pseudonymised ids and cosine similarities, from the report index stored at export) and zero-shot class
probabilities when the experiment had evaluate.zero_shot.prompts. With --query-text TEXT (exported model, or a run
directory after medtf evaluate) they print the training reports nearest to TEXT; report text only with --show-text.
Nucleus classifiers (exported, or a nucleus_classification run directory) take an H&E tile plus --boxes FILE or
--instances FILE and write nuclei.csv, nuclei.geojson (QuPath) and overlay.png (`medtf.tasks.nucleus_predict`).
An input unlike the training data (modality, voxel spacing, size, intensities; the fingerprint `medtf export` stores
in medtf.json) is predicted all the same, with a warning on stderr and in prediction.json's "warnings".
"""

from __future__ import annotations

import sys


def register(commands) -> None:
    p = commands.add_parser("predict", help="segment an image/series with an exported model",
                            description=__doc__)
    p.add_argument("model", metavar="MODEL", help="exported model folder or version folder")
    p.add_argument("--input", help="DICOM series folder, NIfTI/MHD volume or PNG/TIFF image (contrastive models: "
                                   "an mri-reports case folder, a folder of them, or images)")
    p.add_argument("--output", help="output folder (required except with --query-text)")
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
    p.add_argument("--boxes", default=None, metavar="FILE",
                   help="nucleus classifiers: CSV (ymin,xmin,ymax,xmax[,id]) or JSON of nucleus boxes in tile pixels "
                        "(writes nuclei.csv, nuclei.geojson for QuPath, overlay.png)")
    p.add_argument("--instances", default=None, metavar="FILE",
                   help="nucleus classifiers: instance map (PNG/TIFF/.npy, 0 = background) instead of --boxes")
    p.add_argument("--top-k", type=int, default=5,
                   help="contrastive (image-report) models: training reports retrieved per input (default %(default)s)")
    p.add_argument("--query-text", default=None, metavar="TEXT",
                   help="contrastive models (exported, or a run directory after medtf evaluate): print the training "
                        "reports nearest to TEXT (pseudonymised ids and cosine similarities) instead of --input")
    p.add_argument("--show-text", action="store_true",
                   help="contrastive models: also print/write the retrieved reports' text (PHI: off by default)")
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


def _contrastive(args) -> int | None:
    """Image-report models (exported, or a run directory): top-k training reports / zero-shot probabilities per
    input, or the reports nearest to --query-text; None for other models."""
    from pathlib import Path

    from medtf.export import ExportError
    from medtf.io import InputError
    from medtf.tasks import get_task, task_of_model, task_of_run

    task = task_of_run(args.model) if (Path(args.model) / "config.yaml").is_file() else task_of_model(args.model)
    if task != "contrastive":
        if args.query_text is not None or args.show_text:
            print(f"medtf predict: --query-text / --show-text are for contrastive (image-report) models; this is "
                  f"a {task} model", file=sys.stderr)
            return 2
        return None
    if args.query_text is None and (args.input is None or args.output is None):
        print("medtf predict: give --input and --output, or --query-text TEXT", file=sys.stderr)
        return 2
    try:
        summary = get_task(task).predict(args.model, args.input, args.output, top_k=args.top_k,
                                         query_text=args.query_text, show_text=args.show_text)
    except (ExportError, InputError, FileNotFoundError, ValueError) as exc:
        print(f"medtf predict: {exc}", file=sys.stderr)
        return 2
    if args.query_text is not None:
        return 0  # the hits are printed by the task
    for row in summary["predictions"]:  # ids and scores only; texts are in prediction.json with --show-text
        hits = ", ".join(f"{h['example_id']} {h['score']:.3f}" for h in row.get("top_k", []))
        zero_shot = f"class {row['class']}; " if "class" in row else ""
        print(f"{row['input']}: {zero_shot}top-{args.top_k} reports: {hits or '(no report index)'}")
    print(f"predicted {len(summary['predictions'])} input(s) ({task}) -> {args.output}")
    return 0


def run(args) -> int:
    from medtf.export import ExportError
    from medtf.export.predict import predict_path
    from medtf.io import InputError

    contrastive = _contrastive(args)
    if contrastive is not None:
        return contrastive
    if args.input is None or args.output is None:
        print("medtf predict: --input and --output are required", file=sys.stderr)
        return 2

    problem = _reconstruct_problem(args)
    if problem:
        print(f"medtf predict: {problem}", file=sys.stderr)
        return 2
    from pathlib import Path

    from medtf.tasks import get_task, task_of_model, task_of_run

    task = task_of_model(args.model)
    if (Path(args.model) / "config.yaml").is_file() and task_of_run(args.model) == "nucleus_classification":
        task = "nucleus_classification"  # a run directory: its predict exports the checkpoint first
    if args.lesions and task != "classification":
        print(f"medtf predict: --lesions is for lesion classifiers (prostate-mpmri / lung-nodules models); this "
              f"is a {task} model", file=sys.stderr)
        return 2
    nuclei = {k: v for k, v in (("boxes", args.boxes), ("instances", args.instances)) if v}
    if nuclei and task != "nucleus_classification":
        print(f"medtf predict: --boxes / --instances are for nucleus classifiers; this is a {task} model",
              file=sys.stderr)
        return 2
    if task != "segmentation":  # the model's task writes its own outputs (medtf.tasks)
        try:
            extra = {"lesions": args.lesions} if args.lesions else nuclei
            summary = get_task(task).predict(args.model, args.input, args.output, threshold=args.threshold,
                                             tta=args.tta, **extra)
        except (ExportError, InputError, ValueError) as exc:
            print(f"medtf predict: {exc}", file=sys.stderr)
            return 2
        failed = [r for r in summary["predictions"] if r.get("status") == "failed"]
        for r in failed:  # a bad lesion row fails alone; the others are predicted
            print(f"medtf predict: lesion {r['lesion']}: {r['error']}", file=sys.stderr)
        done = len(summary["predictions"]) - len(failed)
        what = "lesion(s)" if args.lesions else "nucleus/nuclei" if nuclei else "input(s)"
        print(f"predicted {done} {what} ({task})"
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
