"""The LUNGx (SPIE-AAPM-NCI Lung CT Challenge) source layout: the nodule CSV and each scan's CT series.

Pure parsing and selection, no resampling (that is `tfrecords_builder.lung_nodules`). The challenge's nodule
spreadsheets (CalibrationSet / TestSet ``NoduleData``, saved as CSV) have one row per nodule::

    Scan Number, Nodule Number, Nodule Center x,y Position*, Nodule Center Image, Diagnosis
    LUNGx-CT001, 1, "317, 367", 44, benign

``Nodule Center x,y Position`` is the (column, row) pixel of the centre in that image, ``Nodule Center Image``
the slice's DICOM InstanceNumber, ``Diagnosis`` benign / malignant / primary lung cancer (any case). Column names
are matched loosely (case, spaces and punctuation ignored; "scan", "nodule number", "x,y", "image" or "slice",
"diagnosis").
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

from medtf.io.errors import InputError

DIAGNOSES = {"benign": 0, "malignant": 1, "primary lung cancer": 1}
_COLUMNS = {  # role -> normalised header prefixes accepted for it
    "scan": ("scannumber", "scan", "scanid", "patientid"),
    "nodule": ("nodulenumber", "nodule", "noduleid"),
    "xy": ("nodulecenterxyposition", "centerxyposition", "xyposition", "centerxy", "xy"),
    "slice": ("nodulecenterimage", "centerimage", "slicenumber", "image", "slice"),
    "diagnosis": ("diagnosis", "finaldiagnosis"),
}


@dataclasses.dataclass(frozen=True)
class Nodule:
    scan: str
    number: int
    xy: tuple[float, float] | None
    slice_number: int | None
    diagnosis: str
    label: int  # 1 malignant / primary lung cancer, 0 benign, -1 when the row has a problem
    row: int  # 1-based data row in the CSV
    problem: str = ""  # reported when its scan is converted (the rest of the scan converts)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def _roles(header: list[str], path: Path, optional: tuple = ()) -> dict[str, int]:
    normalised = [_norm(h) for h in header]
    roles = {}
    for role, names in _COLUMNS.items():
        for name in names:  # most specific first
            hits = [i for i, h in enumerate(normalised) if h.startswith(name) and i not in roles.values()]
            if hits:
                roles[role] = hits[0]
                break
    missing = [r for r in _COLUMNS if r not in roles and r not in optional]
    if missing:
        raise InputError(path, f"nodule CSV lacks the column(s) for {missing}; its header: {header}")
    return roles


def read_nodules(path: Path, need_diagnosis: bool = True) -> dict[str, list[Nodule]]:
    """Scan -> its nodules from a nodule CSV; rows with a bad value carry a ``problem`` instead of failing all.
    ``need_diagnosis=False`` (prediction): the Diagnosis column may be absent or empty (label -1, no problem).

    Raises:
        InputError: unreadable file, no header, or a required column missing.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the nodule CSV ({type(exc).__name__})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise InputError(path, "nodule CSV is empty")
    roles = _roles(rows[0], path, optional=() if need_diagnosis else ("diagnosis",))
    out: dict[str, list[Nodule]] = {}
    for n, row in enumerate(rows[1:], start=1):
        cell = {"diagnosis": "", **{role: (row[i].strip() if i < len(row) else "") for role, i in roles.items()}}
        if not cell["scan"]:
            continue
        problems, xy, slice_number, number = [], None, None, 0
        try:
            number = int(float(cell["nodule"]))
        except ValueError:
            problems.append(f"nodule number {cell['nodule']!r} is not a number")
        try:
            values = [float(v) for v in re.split(r"[\s,;]+", cell["xy"].strip("()[] ")) if v]
            if len(values) != 2:
                raise ValueError
            xy = (values[0], values[1])
        except ValueError:
            problems.append(f"centre x,y {cell['xy']!r} is not two numbers")
        try:
            slice_number = int(float(cell["slice"]))
        except ValueError:
            problems.append(f"slice number {cell['slice']!r} is not a number")
        diagnosis = " ".join(cell["diagnosis"].lower().split())
        if diagnosis not in DIAGNOSES and (need_diagnosis or diagnosis):
            problems.append(f"diagnosis {cell['diagnosis']!r} is not one of {sorted(DIAGNOSES)}")
        label = -1 if problems or diagnosis not in DIAGNOSES else DIAGNOSES[diagnosis]
        out.setdefault(cell["scan"], []).append(Nodule(cell["scan"], number, xy, slice_number, diagnosis, label,
                                                       n, "; ".join(problems)))
    return out


def find_csv(input_dir: Path, given: Path | None) -> Path:
    """The nodule CSV: ``given``, else the one ``*.csv`` up to two levels below ``input_dir`` whose header has the
    nodule columns. Raises `InputError` when there is none or more than one."""
    if given is not None:
        return Path(given)
    found = []
    for path in sorted([*input_dir.glob("*.csv"), *input_dir.glob("*/*.csv"), *input_dir.glob("*/*/*.csv")]):
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                header = next(csv.reader(fh), [])
            _roles(header, path)
            found.append(path)
        except (InputError, OSError, UnicodeDecodeError):
            continue
    if len(found) != 1:
        what = "no CSV with the nodule columns" if not found else f"{len(found)} nodule CSVs"
        raise InputError(input_dir, f"{what} found up to two levels below the input; give --nodules-csv")
    return found[0]


def scan_folders(input_dir: Path, scans) -> dict[str, Path]:
    """Scan number -> its folder: the first folder named exactly like the scan, up to three levels down."""
    wanted, found = set(scans), {}
    for depth in ("*", "*/*", "*/*/*"):
        for path in sorted(input_dir.glob(depth)):
            if path.is_dir() and path.name in wanted and path.name not in found:
                found[path.name] = path
    return found


def choose_ct_series(scan) -> "object":
    """The CT image series with the most slices of a `medtf.io.dicom_series.DicomScan` (any image series when
    none says CT); `InputError` naming what was found when there is none."""
    images = scan.image_series
    ct = [s for s in images if (s.modality or "").upper() == "CT"] or images
    if not ct:
        raise InputError(scan.folder, "no CT image series in the scan's folder")
    return max(ct, key=lambda s: (s.n_frames, s.series_uid))
