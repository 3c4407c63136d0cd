"""One patient's catheters from a predicted mask: centrelines -> JSON + RT Plan, matched against the original plan.

What ``medtf reconstruct``, ``medtf predict --reconstruct`` and the demo run. Outputs in the output folder:

* ``catheters.json``: the centrelines (`medtf.rt.catheter_io.write_catheters_json`, LPS mm, tip first);
* ``RP.reconstructed.dcm``: an RT Plan on the CT's frame of reference and patient/study
  (`medtf.rt.catheter_io.write_reconstructed_plan`); with the original plan its channel numbers follow the matched
  planned channels and it carries that plan's machine and applicator data;
* ``reconstruction.json``: counts and, with the original plan, the matching report in mm
  (`medtf.rt.catheter_match`: found / missed / spurious, mean and max point-to-curve distance, tip error, per
  channel). No patient identifier or UID is written into it.

Example:
    >>> report = reconstruct_case("pred/mask.nii.gz", "patient/CT", "pred/", plan="patient/RP.dcm")
    >>> report["match"]["found"], report["match"]["mean_distance_mm"]
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from medtf.io.errors import InputError
from medtf.io.volume import Volume

MASK_FILE = "mask.nii.gz"
CATHETERS_FILE = "catheters.json"
PLAN_FILE = "RP.reconstructed.dcm"
REPORT_FILE = "reconstruction.json"
GRID_TOLERANCE_MM = 1e-3


def mask_path(mask_or_prediction: str | os.PathLike) -> Path:
    """A mask file, or the ``mask.nii.gz`` of a `medtf predict` output folder."""
    path = Path(mask_or_prediction)
    if path.is_dir():
        path = path / MASK_FILE
        if not path.is_file():
            raise InputError(mask_or_prediction, f"no {MASK_FILE} in the folder (a `medtf predict` output folder "
                                                  "or a mask file is expected)")
    elif not path.is_file():
        raise InputError(path, "mask does not exist")
    return path


def read_ct(ct_dir: str | os.PathLike, series_uid: str | None = None):
    """``(Volume, first slice header)`` of the CT series in ``ct_dir`` (``series_uid`` when it holds several)."""
    import pydicom

    from medtf.io import read_dicom_series, scan_dicom_folder

    ct_dir = Path(ct_dir)
    if not ct_dir.is_dir():
        raise InputError(ct_dir, "CT folder does not exist")
    images = [s for s in scan_dicom_folder(ct_dir).image_series if series_uid in (None, s.series_uid)]
    if len(images) != 1:
        raise InputError(ct_dir, f"{len(images)} image series in the folder (pass --series-uid to pick one)")
    volume = read_dicom_series(images[0])
    return volume, pydicom.dcmread(images[0].files[0], stop_before_pixels=True)


def check_same_grid(mask: Volume, ct: Volume, where) -> None:
    """Raise `InputError` unless the mask lies voxel for voxel on the CT's grid (shape, spacing, origin, axes)."""
    if tuple(mask.array.shape[:3]) != tuple(ct.array.shape[:3]):
        raise InputError(where, f"mask shape {tuple(mask.array.shape[:3])} differs from the CT's "
                                f"{tuple(ct.array.shape[:3])}: predict on this CT series")
    corners = np.array([[0, 0, 0], list(ct.shape_xyz)], dtype=np.float64)
    apart = np.abs(mask.index_to_physical(corners) - ct.index_to_physical(corners)).max()
    if apart > GRID_TOLERANCE_MM:
        raise InputError(where, f"mask grid is {apart:.3f} mm away from the CT's (spacing, origin or direction "
                                "differ): predict on this CT series")


def _finite(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def reconstruct_case(mask: str | os.PathLike | Volume, ct_dir: str | os.PathLike, output: str | os.PathLike, *,
                     plan: str | os.PathLike | None = None, series_uid: str | None = None,
                     step_mm: float = 1.0, max_mean_distance_mm: float = 3.0) -> dict:
    """Reconstruct, write and (with ``plan``) match the catheters of one predicted mask.

    Args:
        mask: a mask file or `medtf predict` output folder (`mask_path`), or a Volume on the CT grid.
        ct_dir: the CT series folder the mask was predicted on (identity, frame of reference, geometry).
        output: folder for the files of the module docstring (created).
        plan: the original RT Plan: matching report, channel numbers, machine and applicator data.
        series_uid: the CT series when ``ct_dir`` holds several.
        step_mm: centreline point spacing.
        max_mean_distance_mm: catheters further than this from every planned one are spurious.

    Returns:
        The report written to ``reconstruction.json``.

    Raises:
        InputError: unreadable inputs, a mask not on the CT grid, a plan on another frame of reference.
    """
    from medtf.io import read_image
    from medtf.rt.brachy_plan import check_frame_of_reference, read_brachy_plan
    from medtf.rt.catheter_io import write_catheters_json, write_reconstructed_plan
    from medtf.rt.catheter_match import match_catheters
    from medtf.rt.polyline import polyline_length
    from medtf.rt.reconstruct import reconstruct_catheters

    source = mask if isinstance(mask, Volume) else mask_path(mask)
    mask_volume = mask if isinstance(mask, Volume) else read_image(source)
    ct, header = read_ct(ct_dir, series_uid)
    check_same_grid(mask_volume, ct, source if not isinstance(mask, Volume) else ct_dir)
    planned = None
    if plan is not None:
        planned = read_brachy_plan(plan)
        check_frame_of_reference(planned, ct)

    centrelines = reconstruct_catheters(np.asarray(mask_volume.array) > 0, ct, step_mm=step_mm)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    frame = str(header.FrameOfReferenceUID)
    write_catheters_json(out / CATHETERS_FILE, centrelines, frame_of_reference_uid=frame, step_mm=step_mm)
    report: dict = {"catheters": len(centrelines), "step_mm": step_mm, "outputs": {"catheters": CATHETERS_FILE},
                    "lengths_mm": [round(polyline_length(c), 2) for c in centrelines], "notes": []}
    numbers = None
    if planned is not None:
        match = match_catheters(centrelines, planned.polylines, max_mean_distance_mm=max_mean_distance_mm)
        planned_numbers = [c.channel_number for c in planned.catheters]
        numbers = match.channel_numbers(planned_numbers)
        summary = {k: _finite(v) for k, v in match.summary().items()}
        summary["planned"] = len(planned.catheters)
        summary["max_mean_distance_mm"] = max_mean_distance_mm
        summary["channels"] = [
            {"channel": planned_numbers[j], "catheter": i + 1, "mean_mm": round(m, 4), "max_mm": round(x, 4),
             "tip_mm": round(t, 4)} for i, j, m, x, t in match.pairs]
        summary["missed_channels"] = [planned_numbers[j] for j in match.missed]
        summary["spurious_catheters"] = [i + 1 for i in match.spurious]
        report["match"] = summary
    if centrelines:
        write_reconstructed_plan(out / PLAN_FILE, centrelines, reference_ct=header, channel_numbers=numbers,
                                 source_plan=plan)
        report["outputs"]["plan"] = PLAN_FILE
        report["channel_numbers"] = numbers or list(range(1, len(centrelines) + 1))
    else:
        report["notes"].append("no catheter found in the mask: no RT Plan written (a plan needs a channel)")
    tmp = out / f".{REPORT_FILE}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / REPORT_FILE)
    return report


def format_report(report: dict) -> str:
    """The console summary of a `reconstruct_case` report (mm)."""
    lines = [f"reconstructed {report['catheters']} catheter(s)"]
    match = report.get("match")
    if match:
        def mm(key):
            value = match.get(key)
            return "n/a" if value is None else f"{value:.2f} mm"

        lines.append(f"against the plan: found {match['found']}/{match['planned']} (missed {match['missed']}, "
                     f"spurious {match['spurious']}), mean point-to-curve {mm('mean_distance_mm')}, "
                     f"max {mm('max_distance_mm')}, tip error {mm('tip_error_mm')}")
    lines += [f"  note: {note}" for note in report.get("notes", [])]
    return "\n".join(lines)


__all__ = ["CATHETERS_FILE", "PLAN_FILE", "REPORT_FILE", "check_same_grid", "format_report", "mask_path",
           "read_ct", "reconstruct_case"]
