"""``medtf reconstruct MASK_OR_PREDICTION --ct DICOM_DIR [--plan ORIGINAL_RP] --output DIR``: catheters from a mask.

MASK_OR_PREDICTION is a NIfTI/MHA/NRRD catheter mask on the CT's grid (e.g. the mask.nii.gz of `medtf predict`) or
a `medtf predict` output folder. Writes catheters.json (centrelines, LPS mm, tip first), RP.reconstructed.dcm (an
RT Plan attached to the CT's patient, study and frame of reference) and reconstruction.json. With --plan, the
catheters are matched to the original plan's channels: the report gives found/missed/spurious catheters and the
distances in mm, and the new plan keeps the matched channel numbers and the plan's machine and applicator data.
"""

from __future__ import annotations

import sys


def register(commands) -> None:
    p = commands.add_parser("reconstruct", help="catheter centrelines from a mask -> JSON + RT Plan (+ match report)",
                            description=__doc__)
    p.add_argument("mask", metavar="MASK_OR_PREDICTION", help="catheter mask file or `medtf predict` output folder")
    p.add_argument("--ct", required=True, help="the CT series folder the mask was predicted on")
    p.add_argument("--plan", default=None, help="the original RT Plan: matching report in mm, its channel numbers, "
                                                "machine and applicator data")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--series-uid", default=None, help="CT series to use when the folder holds several")
    p.add_argument("--step-mm", type=float, default=1.0, help="centreline point spacing (default %(default)s)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from medtf.io import InputError
    from medtf.rt.reconstruct_case import format_report, reconstruct_case

    try:
        report = reconstruct_case(args.mask, args.ct, args.output, plan=args.plan, series_uid=args.series_uid,
                                  step_mm=args.step_mm)
    except (InputError, ValueError) as exc:
        print(f"medtf reconstruct: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    print(f"wrote {', '.join(report['outputs'].values())} and reconstruction.json -> {args.output}")
    return 0
