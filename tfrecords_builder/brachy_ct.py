"""Convert brachytherapy planning CTs with their DICOM RT Plans into catheter-segmentation TFRecords.

Input layout: one folder per patient (any nesting and file names below it) holding a CT series and one or more
brachytherapy RT Plans, as exported from a treatment planning system::

    <input>/<patient folder>/CT/*.dcm        CT Image Storage, one file per slice
    <input>/<patient folder>/RP*.dcm         RT Plan with ApplicationSetupSequence > ChannelSequence > ...

One example per plan (see `medtf.data.schema.BRACHY_CT`): the CT in HU, the catheters rasterised as tubes of
``--catheter-radius-mm`` onto the (optionally resampled and cropped) CT grid as a binary mask and an instance
map (catheter k = label k in plan order), the catheter polylines with each one's plan ``ChannelNumber``, and the
grid geometry. ``--crop-margin-mm`` crops the *training* split only (to its plan's catheters plus the margin):
val, test and K-fold (``fold-*``, each validates once) examples keep the whole CT, so evaluation sees every
false positive a deployed model would make away from the catheters. The plan must share the CT's
FrameOfReferenceUID; a plan
without a matching CT is reported, not guessed. The patient (for splits) is the DICOM PatientID, so several
folders of one patient (fractions, re-plans) always land in the same split.

Usage::

    medtf convert brachy-ct --input data/brachy --output shards/brachy --spacing 1,1,2 --crop-margin-mm 20
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from medtf.data.schema import BRACHY_CT
from medtf.io.errors import FrameOfReferenceError, InputError
from tfrecords_builder.engine import Case, CaseOutput, Converter, converter_main

DEFAULT_WINDOW = (40.0, 400.0)
TRAIN_SPLIT = "train"  # the only split --crop-margin-mm crops (the engine sets Case.split when it applies)
MAX_CATHETERS = 255  # instance labels are stored as uint8 (real implants use tens of catheters)


def _floats(text: str | None, n: int, name: str):
    if text is None:
        return None
    values = tuple(float(v) for v in str(text).split(","))
    if len(values) != n or any(v <= 0 for v in values):
        raise ValueError(f"{name} expects {n} positive comma-separated numbers, got {text!r}")
    return values


def _patient_id(folder: Path) -> str | None:
    import pydicom

    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
        except Exception:  # not DICOM: the case itself will report unreadable files
            continue
        if str(ds.get("PatientID", "")).strip():
            return str(ds.PatientID)
    return None


def resample(volume, spacing, default_value: float = -1024.0):
    """Linear resampling of a `Volume` to ``spacing`` (x, y, z) over the same physical extent."""
    import SimpleITK as sitk

    from medtf.io.volume import Volume

    image = volume.to_sitk()
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    out = sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                        image.GetDirection(), default_value, sitk.sitkFloat32)
    return Volume.from_sitk(out, modality=volume.modality, metadata=volume.metadata)


def crop(volume, box):
    """Crop a `Volume` to index slices ``(z, y, x)``; the origin moves to the box's first voxel."""
    lo = [box[2].start, box[1].start, box[0].start]
    return volume.with_array(volume.array[box].copy(), origin=tuple(volume.index_to_physical(lo)))


def catheter_radius(requested: float | None, ct) -> float:
    """The tube radius used for ``ct``: the requested one, or max(1 mm, half the voxel diagonal).

    A catheter running between voxel centres is up to half a voxel diagonal from the nearest centre (1.22 mm at
    1 x 1 x 2 mm): a smaller tube leaves holes in the mask, which break centreline reconstruction into pieces.
    """
    if requested is not None:
        return float(requested)
    return max(1.0, 0.5 * float(np.linalg.norm(ct.spacing)))


class BrachyCtConverter(Converter):
    kind = "brachy-ct"
    schema = BRACHY_CT
    stratify_at_discovery = True  # no stratum: splits are known up front and shards stream during conversion

    def add_arguments(self, parser):
        group = parser.add_argument_group("brachy-ct options")
        group.add_argument("--catheter-radius-mm", type=float, default=None,
                           help="tube radius of the rasterised catheters (default: max(1 mm, half the voxel "
                                "diagonal), the smallest radius that leaves no gaps between voxel centres)")
        group.add_argument("--spacing", default=None,
                           help="resample the CT to this voxel size x,y,z in mm (default: keep the CT's)")
        group.add_argument("--crop-margin-mm", type=float, default=None,
                           help="crop training-split examples to their catheters' bounding box plus this margin; "
                                "val, test and --folds examples keep the whole CT, since a crop to the plan's "
                                "catheters would hide false positives from evaluation (default: no crop)")

    def case_options(self, options) -> dict:
        return {"catheter_radius_mm": options.catheter_radius_mm,
                "spacing": _floats(options.spacing, 3, "--spacing"),
                "crop_margin_mm": options.crop_margin_mm}

    def uses_split(self, options) -> bool:
        return options.crop_margin_mm is not None  # only the training split is cropped

    def discover(self, input_dir: Path, options):
        self.case_options(options)  # validate options before any work starts
        cases, failures = [], []
        for folder in sorted(p for p in input_dir.iterdir() if p.is_dir()):
            if not any(p.is_file() for p in folder.rglob("*")):
                failures.append((folder.name, "empty folder"))
                continue
            patient = _patient_id(folder)
            if patient is None:
                failures.append((folder.name, "no readable DICOM file with a PatientID"))
                continue
            cases.append(Case(key=folder.name, patient_id=patient, paths=(folder,), raw_ids=(folder.name,)))
        return cases, failures

    def convert_case(self, case: Case, options) -> CaseOutput:
        from medtf.io.dicom_series import scan_dicom_folder

        folder = case.paths[0]
        scan = scan_dicom_folder(folder)
        plans = [f for s in scan.series if s.modality == "RTPLAN" for f in s.files]
        cts = [s for s in scan.image_series if s.modality == "CT"]
        if not plans:
            raise InputError(folder, "no RT Plan (Modality RTPLAN) in folder" + _skipped_note(scan))
        if not cts:
            found = "; ".join(s.label() for s in scan.image_series)
            raise InputError(folder, "no CT image series in folder" + (f" (image series: {found})" if found else "")
                             + _skipped_note(scan))
        return CaseOutput(examples=[self._convert_plan(path, cts, options, case.split) for path in sorted(plans)])

    def _convert_plan(self, plan_path: Path, cts, options, split: str | None = None) -> dict:
        from medtf.io.dicom_series import read_dicom_series
        from medtf.rt import catheter_bounding_box, check_frame_of_reference, rasterize_polylines, read_brachy_plan

        settings = self.case_options(options)
        plan = read_brachy_plan(plan_path)
        matching = [s for s in cts if s.frame_of_reference_uid == plan.frame_of_reference_uid]
        if len(matching) > 1:
            raise InputError(plan_path, f"{len(matching)} CT series share the plan's frame of reference: "
                                        + "; ".join(s.label() for s in matching) + ". Keep only the CT the plan "
                                        "was made on in this patient folder (move the other series' files out)")
        if not matching and len(cts) > 1:
            raise FrameOfReferenceError(plan_path, f"no CT series shares the plan's FrameOfReferenceUID "
                                                   f"{plan.frame_of_reference_uid or '(missing)'}: " + "; ".join(
                                                       f"{s.label()} has {s.frame_of_reference_uid or '(none)'}"
                                                       for s in cts) + "; the plan belongs to none of these CTs")
        ct = read_dicom_series(matching[0] if matching else cts[0])
        try:
            check_frame_of_reference(plan, ct)
        except FrameOfReferenceError as exc:
            raise FrameOfReferenceError(plan_path, exc.reason) from None
        polylines = plan.polylines
        if len(polylines) > MAX_CATHETERS:
            raise InputError(plan_path, f"{len(polylines)} catheters; the instance map holds at most {MAX_CATHETERS}")
        if settings["spacing"]:
            ct = resample(ct, settings["spacing"])
        if settings["crop_margin_mm"] is not None and split == TRAIN_SPLIT:
            ct = crop(ct, catheter_bounding_box(polylines, ct, settings["crop_margin_mm"]))
        mask, instances = rasterize_polylines(polylines, ct, catheter_radius(settings["catheter_radius_mm"], ct))
        if not mask.any():
            raise InputError(plan_path, "no catheter passes through the CT volume (wrong plan/CT pairing?)")
        hu = ct.array if ct.array.dtype == np.int16 else np.clip(np.rint(ct.array), -32768, 32767).astype(np.int16)
        window = (ct.metadata.get("WindowCenter", DEFAULT_WINDOW[0]), ct.metadata.get("WindowWidth", DEFAULT_WINDOW[1]))
        return {
            "image": hu,
            "mask": mask,
            "instances": instances.astype(np.uint8),
            "catheter_points": np.concatenate(polylines).astype(np.float32),
            "catheter_offsets": np.cumsum([0] + [len(p) for p in polylines]),
            "channel_numbers": [c.channel_number for c in plan.catheters],
            "window": np.asarray(window, np.float32),
            "spacing": ct.spacing,
            "origin": ct.origin,
            "direction": ct.direction,
        }


def _skipped_note(scan, shown: int = 5) -> str:
    """The files of a patient folder that are in no series, named relative to it, for a "not found" message:
    a plan or CT exported as something else (a PNG named .dcm) or cut short is then found at once."""
    def names(items):
        listed = ", ".join(f"{_relative(path, scan.folder)} ({reason})" for path, reason in items[:shown])
        return listed + (f" and {len(items) - shown} more" if len(items) > shown else "")

    not_dicom = [(p, _file_kind(p)) for p, r in scan.skipped if r.startswith("not a DICOM file")]
    other = [(p, r) for p, r in scan.skipped if not r.startswith("not a DICOM file")]
    note = f"; not DICOM: {names(not_dicom)}" if not_dicom else ""
    return note + (f"; unreadable or not part of a series: {names(other)}" if other else "")


def _file_kind(path: Path) -> str:
    from medtf.io.dicom_headers import file_kind

    try:
        with open(path, "rb") as fh:
            return file_kind(fh.read(348)) or "unknown format"
    except OSError as exc:
        return f"cannot open: {exc.strerror or exc}"


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name


def main(argv=None) -> int:
    return converter_main(BrachyCtConverter(), argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
