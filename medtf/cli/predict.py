"""``medtf predict MODEL --input PATH --output DIR``: sliding-window segmentation with an exported model.

MODEL is a folder written by `medtf export` (its highest version) or one version folder. The input is a DICOM
series folder, a NIfTI/MHA/MHD/NRRD volume (3D models) or a PNG/TIFF slice (2D models). Writes mask.nii.gz on the
input grid, seg.dcm (DICOM SEG referencing the series; DICOM input only), overlay PNGs and prediction.json.
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
    p.set_defaults(handler=run)


def run(args) -> int:
    from medtf.export import ExportError
    from medtf.export.predict import predict_path
    from medtf.io import InputError

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
    return 0
