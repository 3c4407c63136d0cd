"""Convert brain MRI studies (one NIfTI per sequence) paired with radiology reports into classification TFRecords.

Input layout: one folder per case, named by its case id, plus one table of reports::

    <input>/reports.csv              columns case_id, report, class [, patient_id]  (UTF-8, BOM allowed,
                                     quoted multi-line reports allowed; class in infarct, tumor, hemorrhage,
                                     normal, others)
    <input>/MR1234567/dwi_b1000.nii.gz   one 3D image per sequence; the file stem is the sequence name
    <input>/MR1234567/t2s.nii.gz         (.nii.gz, .nii, .mha, .nrrd)
    <input>/MR1234567/flair.nii.gz
    <input>/MR7654321/ ...

One example per case (see `medtf.data.schema.MRI_REPORTS`): the sequences resampled onto one common grid and
stacked as channels ``(D, H, W, C)`` in ``--sequences`` order, the report's bytes exactly as in the CSV, the class.

Common grid. The sequences are put on one grid by resampling *in physical space*, using each NIfTI's geometry as
SimpleITK reads it; this is not image registration: a patient who moved between sequences stays misaligned. The
grid has the ``--reference`` sequence's orientation and centre and ``--target-size`` H,W,D voxels. Its spacing
keeps the reference's whole field of view: in-plane, the larger of FOV_x/W and FOV_y/H for both axes (square
pixels; the shorter side is padded), through-plane FOV_z/D. ``--spacing x,y,z`` instead fixes the voxel size, and
the grid is a centre crop/pad of that size. Each sequence is interpolated (linear) once, straight onto the grid;
voxels outside a sequence's own field of view are 0 before normalisation. A sequence covering less than half of
what the reference covers on the grid is rejected (wrong header geometry).

Normalisation, per sequence: foreground = grid voxels above 10% of the 99th percentile of the positive voxels (the
head; drops air, background noise and padding); the whole volume is z-scored with the foreground's mean and
standard deviation, then clipped to ``[-clip, clip]``. Intensities are assumed to be non-negative magnitudes.

Identifiers. The case id (folder name) is a raw identifier: only its keyed hash reaches the shards
(``example_id``). The split unit is the ``patient_id`` column when present, else the case id; splits are
stratified by class. The report is clinical free text and is stored as it is: de-identifying it is the user's
responsibility (``--scrub-report-ids`` only replaces the case's own case and patient ids by ``[ID]``). Report
text is never written to logs or failure messages.

Non-finite voxels (NaN/Inf) fail the case with their count (SimpleITK alone would read them as 0, which
z-scores to a plausible value); ``--nonfinite fill:VALUE`` fills them with VALUE instead (in source intensity
units, before normalisation) and the example's ``nonfinite_filled`` says how many, per sequence.

Bad input is reported per case and the rest converts: a missing or unreadable sequence, an empty or non-UTF-8
report, an unknown class, a CSV row without a case folder or a folder without a row (each with the CSV row
number). A CSV without the required columns stops the run with a message naming the missing columns.

Usage::

    medtf convert mri-reports --input data/mri --output shards/mri --sequences dwi_b1000,t2s,flair \\
        --reference dwi_b1000 --target-size 112,112,16
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

import numpy as np

from medtf.data.schema import MRI_REPORTS
from medtf.io.errors import InputError
from medtf.io.images import IMAGE_SUFFIXES
from medtf.io.nonfinite import NONFINITE_HELP, parse_nonfinite
from tfrecords_builder.engine import Case, CaseOutput, Converter, converter_main
from tfrecords_builder.reports_csv import read_reports_csv

DEFAULT_CLASSES = "infarct,tumor,hemorrhage,normal,others"
FOREGROUND_FRACTION = 0.1
MIN_COVERAGE = 0.5


@dataclasses.dataclass(frozen=True)
class Grid:
    """A sampling grid: ``size`` (x, y, z) voxels, ``spacing``/``origin`` (x, y, z) mm, row-major ``direction``."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


def common_grid(reference, size_xyz, spacing=None) -> Grid:
    """The target grid centred on ``reference`` (a `Volume`), oriented like it, ``size_xyz`` voxels.

    Args:
        reference: the reference sequence.
        size_xyz: target size ``(x, y, z)`` = ``(W, H, D)``.
        spacing: fixed voxel size ``(x, y, z)`` mm, or ``None`` to keep the reference's field of view (square
            in-plane pixels, the shorter in-plane side padded).

    Example:
        >>> grid = common_grid(read_image("dwi_b1000.nii.gz"), (112, 112, 16))
    """
    n, s = np.asarray(reference.shape_xyz, float), np.asarray(reference.spacing)
    size = np.asarray(size_xyz, float)
    if spacing is None:
        fov = n * s
        in_plane = max(fov[0] / size[0], fov[1] / size[1])
        spacing = (in_plane, in_plane, fov[2] / size[2])
    spacing = np.asarray(spacing, float)
    centre = reference.index_to_physical((n - 1) / 2.0)
    origin = centre - reference.direction_matrix @ (spacing * (size - 1) / 2.0)
    return Grid(tuple(int(v) for v in size_xyz), tuple(spacing.tolist()), tuple(origin.tolist()),
                tuple(reference.direction))


def resample_to_grid(volume, grid: Grid, nearest: bool = False) -> np.ndarray:
    """Resample a `Volume` onto ``grid`` in physical space; returns float32 ``(D, H, W)``, 0 outside its FOV."""
    import SimpleITK as sitk

    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    interpolator = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = sitk.Resample(image, grid.size, sitk.Transform(), interpolator, grid.origin, grid.spacing,
                        grid.direction, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def normalise(array: np.ndarray, clip: float) -> np.ndarray | None:
    """Foreground z-score (see the module docstring); ``None`` when the volume has no usable foreground."""
    positive = array[array > 0]
    if positive.size == 0:
        return None
    foreground = array[array > FOREGROUND_FRACTION * np.percentile(positive, 99)]
    mean, std = float(foreground.mean(dtype=np.float64)), float(foreground.std(dtype=np.float64))
    if foreground.size < 8 or std <= 0:
        return None
    return np.clip((array - mean) / std, -clip, clip).astype(np.float32)


def _ints(text: str, n: int, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != n or any(v <= 0 for v in values):
        raise ValueError(f"{name} expects {n} positive comma-separated integers, got {text!r}")
    return values


def _names(text: str, name: str) -> list[str]:
    names = [v.strip() for v in str(text).split(",")]
    if not names or any(not v for v in names) or len(set(n.lower() for n in names)) != len(names):
        raise ValueError(f"{name} expects distinct comma-separated names, got {text!r}")
    return names


def _sequence_file(folder: Path, name: str) -> Path:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
    found = [p for p in images if any(p.name.lower() == name.lower() + s for s in IMAGE_SUFFIXES)]
    if not found:
        listed = ", ".join(p.name for p in images) or "no image files"
        raise InputError(folder, f"missing sequence {name!r}: no {name}.nii.gz / {name}.nii in the case folder "
                                 f"(found: {listed})")
    if len(found) > 1:
        raise InputError(folder, f"sequence {name!r} is ambiguous: {', '.join(p.name for p in found)}")
    return found[0]


class MriReportsConverter(Converter):
    kind = "mri-reports"
    schema = MRI_REPORTS
    stratify_by = "report class"

    def add_arguments(self, parser):
        group = parser.add_argument_group("mri-reports options")
        group.add_argument("--reports-csv", type=Path, default=None,
                           help="the reports table (default: <input>/reports.csv)")
        group.add_argument("--sequences", default="dwi_b1000,t2s,flair",
                           help="sequence file stems in channel order (default %(default)s)")
        group.add_argument("--reference", default=None,
                           help="sequence whose grid (orientation, centre, FOV) is the common grid "
                                "(default: the first of --sequences)")
        group.add_argument("--target-size", default="112,112,16",
                           help="stored size H,W,D per sequence (default %(default)s; stored as (D, H, W, C))")
        group.add_argument("--spacing", default=None,
                           help="fixed voxel size x,y,z in mm, centre crop/pad to --target-size "
                                "(default: keep the reference's field of view)")
        group.add_argument("--clip", type=float, default=5.0,
                           help="clip z-scores to [-clip, clip] (default %(default)s)")
        group.add_argument("--classes", default=DEFAULT_CLASSES,
                           help="class names; label = index (default %(default)s); tumour/haemorrhage/other "
                                "are read as tumor/hemorrhage/others")
        group.add_argument("--nonfinite", default="error", metavar="{error,fill:VALUE}",
                           help=NONFINITE_HELP + " (per sequence, in the example's nonfinite_filled)")
        group.add_argument("--scrub-report-ids", action="store_true",
                           help="replace the case's own case/patient id in its report by [ID] (default: store "
                                "the report byte-exact; de-identifying free text is the user's responsibility)")

    def case_options(self, options) -> dict:
        sequences = _names(options.sequences, "--sequences")
        reference = options.reference or sequences[0]
        if reference not in sequences:
            raise ValueError(f"--reference {reference!r} is not one of --sequences {sequences}")
        h, w, d = _ints(options.target_size, 3, "--target-size")
        spacing = None
        if options.spacing:
            spacing = tuple(float(v) for v in str(options.spacing).split(","))
            if len(spacing) != 3 or any(v <= 0 for v in spacing):
                raise ValueError(f"--spacing expects 3 positive comma-separated numbers, got {options.spacing!r}")
        if options.clip <= 0:
            raise ValueError(f"--clip must be positive, got {options.clip}")
        fill = parse_nonfinite(options.nonfinite)
        return {"sequences": sequences, "reference": reference, "target_size_hwd": [h, w, d],
                "spacing": list(spacing) if spacing else None, "clip": options.clip,
                "normalization": f"z-score over voxels > {FOREGROUND_FRACTION} x p99, clipped",
                "class_names": _names(options.classes, "--classes"),
                "nonfinite": "error" if fill is None else f"fill:{fill:g}",
                "scrub_report_ids": bool(options.scrub_report_ids)}

    def discover(self, input_dir: Path, options):
        settings = self.case_options(options)  # validate options before any work starts
        csv_path = Path(options.reports_csv) if options.reports_csv else input_dir / "reports.csv"
        rows = read_reports_csv(csv_path, settings["class_names"])
        folders = {p.name: p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
        failures, by_id = [], {}
        for row in rows:
            if row.case_id is None:
                failures.append((csv_path.name, f"{row.where}: {row.problem}"))
            else:
                by_id.setdefault(row.case_id, []).append(row)
        cases = []
        for case_id in sorted(set(by_id) | set(folders)):
            folder, matches = folders.get(case_id), by_id.get(case_id, [])
            if folder is not None and not _encodable(case_id):
                failures.append((".", "a case folder name is not valid UTF-8; rename it"))
                continue
            row = matches[0] if matches else None
            problem, where = None, folder
            if not matches:
                problem = f"no row for this case in {csv_path.name}"
            elif len(matches) > 1:
                problem, where = (f"case id appears in {len(matches)} rows of {csv_path.name} "
                                  f"({', '.join(r.where for r in matches)}); keep one row per case"), csv_path
            elif folder is None:
                problem, where = f"{row.where}: no case folder with this case id in the input folder", csv_path
            elif row.problem:
                problem, where = f"{row.where}: {row.problem}", csv_path
            patient = row.patient_id if row is not None and row.patient_id else case_id
            info = (("problem", problem), ("where", str(where)), ("report", row.report if row else b""),
                    ("class_name", row.class_name if row else None), ("label", row.label if row else None))
            paths = (folder, csv_path) if folder is not None else (csv_path,)
            cases.append(Case(key=case_id, patient_id=patient, paths=paths, raw_ids=(case_id,), info=info))
        return cases, failures

    def convert_case(self, case: Case, options) -> CaseOutput:
        from medtf.io.images import read_image

        info = dict(case.info)
        if info["problem"]:
            raise InputError(info["where"], info["problem"])
        settings = self.case_options(options)
        fill = parse_nonfinite(settings["nonfinite"])
        folder = case.paths[0]
        volumes = {}
        for name in settings["sequences"]:
            path = _sequence_file(folder, name)
            volume = read_image(path, fill_nonfinite=fill)
            if volume.ndim != 3 or volume.is_vector:
                raise InputError(path, f"expected a 3D scalar image, got array shape {volume.array.shape}")
            volumes[name] = (path, volume)
        h, w, d = settings["target_size_hwd"]
        grid = common_grid(volumes[settings["reference"]][1], (w, h, d), settings["spacing"])
        coverage = {name: float(resample_to_grid(v.with_array(np.ones(v.array.shape, np.uint8)), grid, True).mean())
                    for name, (_, v) in volumes.items()}
        channels = []
        for name, (path, volume) in volumes.items():
            if coverage[name] < MIN_COVERAGE * coverage[settings["reference"]]:
                raise InputError(path, f"sequence {name!r} covers {100 * coverage[name]:.0f}% of the common grid, "
                                       f"the reference {100 * coverage[settings['reference']]:.0f}%: the images do "
                                       "not overlap in physical space (check the NIfTI geometry)")
            channel = normalise(resample_to_grid(volume, grid), settings["clip"])
            if channel is None:
                raise InputError(path, f"sequence {name!r} has no foreground (empty or constant image)")
            channels.append(channel)
        report = info["report"]
        if settings["scrub_report_ids"]:
            report = _scrub(report, (case.key, case.patient_id))
        example = {
            "image": np.stack(channels, axis=-1),
            "report": report,
            "label": info["label"],
            "class_name": info["class_name"],
            "sequences": settings["sequences"],
            "nonfinite_filled": [v.metadata.get("nonfinite_filled", 0) for _, v in volumes.values()],
            "spacing": grid.spacing,
            "origin": grid.origin,
            "direction": grid.direction,
        }
        return CaseOutput(examples=[example], stratum=info["class_name"])


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scrub(report: bytes, ids) -> bytes:
    text = report.decode("utf-8")
    for raw in sorted({i.strip() for i in ids if i and i.strip()}, key=len, reverse=True):
        text = re.sub(re.escape(raw), "[ID]", text, flags=re.IGNORECASE)
    return text.encode("utf-8")


def main(argv=None) -> int:
    return converter_main(MriReportsConverter(), argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
