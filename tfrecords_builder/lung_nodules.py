"""Convert LUNGx-style lung CT (a DICOM CT series per scan + the nodule CSV) into nodule-centred patch TFRecords.

Input layout (a TCIA download of "SPIE-AAPM Lung CT Challenge" plus its nodule spreadsheet saved as CSV; the
CSV may sit up to two levels below the input or be given with --nodules-csv)::

    <input>/LUNGx/LUNGx-CT001/<study folder>/<series folder>/1-001.dcm ...     one folder per scan, named by it
    <input>/LUNGx/CT-Training-BE001/...
    <input>/NoduleData.csv     Scan Number, Nodule Number, Nodule Center x,y Position*, Nodule Center Image,
                               Diagnosis  (see `tfrecords_builder.lungx_layout`)

One example per nodule (see `medtf.data.schema.LUNG_NODULES`): an ``(H, W, C)`` float32 patch of --patch-mm at
--patch-size pixels in the CT's axial plane, centred on the nodule in physical space (the CSV's pixel (x, y) in the
slice whose InstanceNumber is the CSV's image number, through the series' DICOM geometry), sampled linearly after
anti-aliasing as prostate-mpmri does (`tfrecords_builder.prostate_mpmri.sample_patch`); outside the scan is air
(-1000 HU). Each --window gives one channel in [0, 1]: ``lung`` (-600,1500, the default), ``mediastinal``
(40,400), ``bone`` (400,1800) or ``--window=CENTER,WIDTH``; --hu stores Hounsfield units instead (one channel). Label 1 for malignant or primary lung cancer, 0 for benign.

The scan is the case and split unit; splits are stratified by diagnosis. A scan without a folder or CT series
fails the scan; a bad row (diagnosis not benign/malignant/primary lung cancer, centre outside the image, an image
number no slice has) is skipped and recorded while the scan's other nodules convert. Control images (as
prostate-mpmri's "red dot") go to ``<output>/alignment/<example_id>.png``: top row the CT slice with the CSV's
centre, bottom row the patch channels with the centre dot.

Usage::

    medtf convert lung-nodules --input data/lungx --output shards/lung --patch-mm 65 --patch-size 65
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from medtf.data.schema import LUNG_NODULES
from medtf.io.errors import InputError
from tfrecords_builder import lungx_layout as layout
from tfrecords_builder.engine import Case, CaseOutput, Converter, converter_main
from tfrecords_builder.prostate_mpmri import alignment_folder, antialiased, sample_patch

AIR_HU = -1000.0
NAMED_WINDOWS = {"lung": (-600.0, 1500.0), "mediastinal": (40.0, 400.0), "bone": (400.0, 1800.0)}


def _window(text: str) -> list[float]:
    if str(text).lower() in NAMED_WINDOWS:
        return list(NAMED_WINDOWS[str(text).lower()])
    try:
        centre, width = (float(v) for v in str(text).split(","))
    except ValueError:
        raise ValueError(f"--window takes CENTER,WIDTH in HU (--window=-600,1500) or one of {sorted(NAMED_WINDOWS)}, "
                         f"got {text!r}") from None
    if width <= 0:
        raise ValueError(f"--window width must be > 0, got {text!r}")
    return [centre, width]


def apply_windows(hu: np.ndarray, windows) -> np.ndarray:
    """``(H, W)`` HU -> ``(H, W, C)``: one channel per (centre, width) window mapped to [0, 1], or HU itself."""
    if not windows:
        return hu[..., None].astype(np.float32)
    return np.stack([np.clip((hu - (c - w / 2.0)) / w, 0.0, 1.0) for c, w in windows], -1).astype(np.float32)


def _instance_numbers(series) -> dict[int, str]:
    """InstanceNumber -> SOPInstanceUID of the series' files (headers only)."""
    import pydicom

    out = {}
    for path in series.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["InstanceNumber", "SOPInstanceUID"])
        if getattr(ds, "InstanceNumber", None) is not None:
            out.setdefault(int(ds.InstanceNumber), str(ds.SOPInstanceUID))
    return out


@dataclasses.dataclass
class CT:
    """One scan read for `nodule_patch`: the `Volume` (HU), its anti-aliased SimpleITK image shifted by +1000 HU
    (so `sample_patch`'s 0 outside is air), InstanceNumber -> slice index, patch pixel size (mm) and series label."""

    volume: object
    image: object
    instance_to_z: dict
    spacing: float
    label: str


def load_ct(folder: Path, settings: dict) -> CT:
    """The scan folder's CT series (most slices) prepared for the patch size of ``settings`` (case options)."""
    from medtf.io.dicom_series import read_dicom_series, scan_dicom_folder

    series = layout.choose_ct_series(scan_dicom_folder(folder))
    volume = read_dicom_series(series)
    sop_to_z = {uid: k for k, uid in enumerate(volume.metadata.get("SOPInstanceUIDs", []))}
    instance_to_z = {n: sop_to_z[uid] for n, uid in _instance_numbers(series).items() if uid in sop_to_z}
    spacing = settings["patch_mm"] / settings["patch_size"]
    image = antialiased(volume, volume.array.astype(np.float32) - AIR_HU, spacing)
    return CT(volume, image, instance_to_z, spacing, series.label())


def nodule_patch(ct: CT, nodule, settings: dict):
    """``(patch (H, W, C) float32, centre mm LPS, (slice, x, y))`` of one CSV row; `ValueError` says why not."""
    if nodule.problem:
        raise ValueError(nodule.problem)
    x, y = (v - settings["xy_base"] for v in nodule.xy)
    k = ct.instance_to_z.get(nodule.slice_number)
    if k is None:
        raise ValueError(f"image number {nodule.slice_number} is no slice's InstanceNumber in the {ct.label}")
    nz, ny, nx = ct.volume.array.shape
    if not (0 <= x <= nx - 1 and 0 <= y <= ny - 1):
        raise ValueError(f"centre ({x:g}, {y:g}) lies outside the {nx}x{ny} image")
    centre = ct.volume.index_to_physical([x, y, k])
    patch_hu = sample_patch(ct.image, centre, ct.volume.direction_matrix, ct.spacing, settings["patch_size"]) + AIR_HU
    return apply_windows(patch_hu, settings["windows"]), centre, (k, x, y)


class LungNodulesConverter(Converter):
    kind = "lung-nodules"
    schema = LUNG_NODULES
    stratify_by = "diagnosis of the scan's nodules (any malignant / all benign)"
    stratify_at_discovery = True  # diagnoses are in the CSV

    def add_arguments(self, parser):
        group = parser.add_argument_group("lung-nodules options")
        group.add_argument("--nodules-csv", type=Path, default=None,
                           help="the nodule CSV (default: the one CSV with nodule columns under --input)")
        group.add_argument("--patch-mm", type=float, default=65.0, help="patch side in mm (default %(default)s)")
        group.add_argument("--patch-size", type=int, default=65, help="patch side in pixels (default %(default)s)")
        group.add_argument("--window", action="append", default=None, metavar="CENTER,WIDTH|NAME",
                           help="HU window -> one channel in [0, 1], repeatable: lung (-600,1500, the default), "
                                "mediastinal (40,400), bone (400,1800) or numbers (a negative centre needs '=': "
                                "--window=-600,1500)")
        group.add_argument("--hu", action="store_true", help="store Hounsfield units (one channel, no window)")
        group.add_argument("--xy-base", type=int, choices=[0, 1], default=0,
                           help="the CSV's x, y pixel numbers start at 0 (default) or 1")
        group.add_argument("--no-alignment-pngs", action="store_true", help="do not write alignment/ control PNGs")

    def case_options(self, options) -> dict:
        if options.patch_mm <= 0 or options.patch_size < 3:
            raise ValueError(f"--patch-mm must be > 0 and --patch-size >= 3, got {options.patch_mm}, "
                             f"{options.patch_size}")
        if options.hu and options.window:
            raise ValueError("--hu stores Hounsfield units: it takes no --window")
        windows = None if options.hu else [_window(w) for w in (options.window or ["lung"])]
        return {"patch_mm": options.patch_mm, "patch_size": options.patch_size, "windows": windows,
                "channels": len(windows) if windows else 1, "xy_base": options.xy_base,
                "slice_reference": "DICOM InstanceNumber", "outside_value_hu": AIR_HU,
                "label": "1 malignant or primary lung cancer, 0 benign"}

    def discover(self, input_dir: Path, options):
        self.case_options(options)
        try:
            csv_path = layout.find_csv(input_dir, options.nodules_csv)
            nodules = layout.read_nodules(csv_path)
        except InputError as exc:
            return [], [(".", f"nodule CSV: {exc.reason}")]
        folders = layout.scan_folders(input_dir, nodules)
        cases = []
        for scan in sorted(nodules):
            folder = folders.get(scan)
            labels = {n.label for n in nodules[scan]}
            cases.append(Case(key=str(folder.relative_to(input_dir)) if folder else scan, patient_id=scan,
                              paths=((folder,) if folder else ()) + (csv_path,), raw_ids=(scan,),
                              info=tuple(nodules[scan]), stratum="malignant" if 1 in labels else "benign"))
        return cases, []

    def convert_case(self, case: Case, options) -> CaseOutput:
        folder = case.paths[0] if case.paths and case.paths[0].is_dir() else None
        if folder is None:
            raise InputError(None, "no DICOM folder named after this scan under the input (missing series)")
        settings = self.case_options(options)
        ct = load_ct(folder, settings)
        examples, failures, controls = [], [], []
        for nodule in sorted(case.info, key=lambda n: (n.number, n.row)):
            try:
                patch, centre, control = nodule_patch(ct, nodule, settings)
            except ValueError as exc:
                failures.append((None, f"CSV row {nodule.row} (nodule {nodule.number}): {exc}"))
                continue
            examples.append({"image": patch, "label": nodule.label, "diagnosis": nodule.diagnosis,
                             "nodule_number": nodule.number, "lesion_position": np.asarray(centre, np.float32),
                             "pixel_spacing": np.array([ct.spacing, ct.spacing], np.float32)})
            controls.append(control)
        volume = ct.volume
        if not options.no_alignment_pngs and examples:
            self._write_alignment(case, options, volume, examples, controls, settings["windows"])
        return CaseOutput(examples=examples, stratum=case.stratum, failures=failures)

    @staticmethod
    def _write_alignment(case, options, volume, examples, controls, windows):
        from medtf.data.alignment import render_alignment, write_png_atomic

        out, case_hash = alignment_folder(options, case)
        for i, (example, (k, x, y)) in enumerate(zip(examples, controls)):
            native = apply_windows(volume.array[k].astype(np.float32), windows)
            before = [(native[..., c], (float(x), float(y))) for c in range(native.shape[-1])]
            write_png_atomic(out / f"{case_hash}-{i:04d}.png", render_alignment(before, example["image"]))


def main(argv=None) -> int:
    return converter_main(LungNodulesConverter(), argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
