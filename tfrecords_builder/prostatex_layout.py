"""The PROSTATEx source layout: lesion-information CSVs and the choice of T2 / high-b DWI / ADC series per patient.

Pure parsing and selection, no resampling (that is `tfrecords_builder.prostate_mpmri`). Real-data facts:

- ``ProstateX-Findings-{Train,Test}.csv``: ``ProxID, fid, pos, zone[, ClinSig]``; ``pos`` is the lesion centre in
  patient coordinates (mm, LPS) as ``"x y z"``; ClinSig is ``TRUE``/``FALSE`` and absent from the test set.
- ``ProstateX-Images-{Train,Test}.csv``: one row per finding and series with ``Name`` (sequence name + ``0``, e.g.
  ``t2_tse_tra0``), ``ijk`` (``"i j k"``: 0-based column, row and slice of that series, ITK convention; DICOM
  InstanceNumber is 1-based) and ``DCMSerNum`` (the series number, also the leading number of its folder).
- Series folders ``<n>-<description>-<5 digits>`` (older NBIA: ``<n>.000000-...``), e.g. ``4-t2tsetra-00702``,
  ``7-ep2ddifftraDYNDIST-...`` (b = 50/400/800 stacked in one series), ``8-ep2ddifftraDYNDISTADC-...``,
  ``9-ep2ddifftraDYNDISTCALCBVAL-...`` (computed b = 1400).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

from medtf.io.errors import InputError

FINDINGS_GLOB = "ProstateX-Findings-*.csv"
SERIES_DIR = re.compile(r"^(?P<number>\d+)(?:\.0+)?-(?P<description>.*?)(?:-\d{5})?$")
SIEMENS_B_VALUE = (0x0019, "SIEMENS MR HEADER", 0x0C)
SEQUENCES = ("t2_tra", "dwi", "adc")


@dataclasses.dataclass(frozen=True)
class ImageRow:
    """One row of the Images CSV: the finding seen in one series (``ijk`` kept as text, parsed when used)."""

    fid: int
    series_number: int
    name: str
    ijk: str


@dataclasses.dataclass(frozen=True)
class Finding:
    prox_id: str
    fid: int
    pos: tuple[float, float, float] | None
    zone: str
    label: int  # 1 / 0 / -1 (no ClinSig: challenge test set)
    source: str  # findings CSV, relative to the input
    problem: str = ""  # a row that could not be parsed: reported when its patient is converted


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def parse_numbers(text: str, n: int, what: str) -> tuple[float, ...]:
    """``"1 2 3"`` (spaces or commas) -> floats; `ValueError` naming ``what`` otherwise."""
    parts = [p for p in re.split(r"[\s,]+", str(text or "").strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != n:
        raise ValueError(f"{what} {text!r} is not {n} numbers")
    return values


def _label(text) -> int:
    value = str(text or "").strip().lower()
    if value in ("true", "1", "yes", "t"):
        return 1
    if value in ("false", "0", "no", "f"):
        return 0
    return -1


def _read_rows(path: Path, required: tuple, one_of: tuple = ()) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in required if c not in columns]
        if one_of and not any(c in columns for c in one_of):
            missing.append(" or ".join(one_of))
        if missing:
            raise InputError(path, f"missing column(s) {', '.join(missing)} (columns: {', '.join(columns)})")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def read_findings(path: Path, source: str, need_pos: bool) -> dict[str, list[Finding]]:
    """Findings per ProxID. Raises `InputError` for missing columns; bad rows become ``Finding.problem``."""
    rows = _read_rows(path, ("ProxID", "fid") + (("pos",) if need_pos else ()))
    out: dict[str, list[Finding]] = {}
    for n, row in enumerate(rows, start=2):  # line numbers as in a spreadsheet (header is line 1)
        prox = row["ProxID"]
        if not prox:
            continue
        problem, pos, fid = "", None, -1
        try:
            fid = int(float(row["fid"]))
        except ValueError:
            problem = f"line {n}: fid {row['fid']!r} is not a number"
        if row.get("pos"):
            try:
                pos = parse_numbers(row["pos"], 3, "pos")
            except ValueError as exc:
                problem = problem or f"line {n}: {exc}"
        if any(f.fid == fid for f in out.get(prox, [])):
            problem = problem or f"line {n}: fid {fid} listed twice for this patient"
        out.setdefault(prox, []).append(Finding(prox, fid, pos, row.get("zone", ""), _label(row.get("ClinSig")),
                                                source, problem))
    return out


def read_images(path: Path) -> dict[str, list[ImageRow]]:
    """Images-CSV rows per ProxID (``DCMSerNum``; ``DCMSerNumber`` is accepted too)."""
    rows = _read_rows(path, ("ProxID", "fid", "ijk"), one_of=("DCMSerNum", "DCMSerNumber"))
    out: dict[str, list[ImageRow]] = {}
    for row in rows:
        try:
            number = int(float(row.get("DCMSerNum") or row.get("DCMSerNumber")))
            fid = int(float(row["fid"]))
        except (TypeError, ValueError):
            continue  # an unusable row only matters if its series is chosen; then "no row" is reported
        out.setdefault(row["ProxID"], []).append(ImageRow(fid, number, row.get("Name", ""), row["ijk"]))
    return out


def find_csv_pairs(input_dir: Path, findings: list | None, images: list | None) -> list[tuple[Path, Path | None]]:
    """(findings CSV, images CSV or None) pairs: the given overrides, else ``ProstateX-Findings-*.csv`` found in
    the input folder or one/two levels below it, each paired with the ``...-Images-...`` file beside it."""
    if findings:
        images = list(images or [])
        if images and len(images) != len(findings):
            raise ValueError("give one --images-csv per --findings-csv (or none)")
        return [(Path(f), Path(images[i]) if images else None) for i, f in enumerate(findings)]
    found = sorted({*input_dir.glob(FINDINGS_GLOB), *input_dir.glob(f"*/{FINDINGS_GLOB}"),
                    *input_dir.glob(f"*/*/{FINDINGS_GLOB}")})
    pairs = []
    for path in found:
        partner = path.with_name(path.name.replace("Findings", "Images"))
        pairs.append((path, partner if partner.exists() else None))
    return pairs


def patient_folders(input_dir: Path) -> dict[str, Path]:
    """Folders at depth 1 or 2 (``<input>/<ProxID>`` or ``<input>/PROSTATEx/<ProxID>``) by name."""
    out = {}
    for level in (input_dir.glob("*/*"), input_dir.glob("*")):  # depth 1 wins over depth 2
        out.update({p.name: p for p in level if p.is_dir()})
    return out


@dataclasses.dataclass
class SeriesFolder:
    path: Path
    number: int | None
    description: str
    files: list[Path]

    @property
    def label(self) -> str:
        """PHI-free name for messages: ``series 4 (t2_tse_tra)``."""
        return f"series {self.number} ({self.description})"


def list_series(patient_dir: Path) -> list[SeriesFolder]:
    """Every folder below the patient that holds files, with its series number and description.

    Number and description come from the first file's SeriesNumber/SeriesDescription, else from the folder name.
    """
    import pydicom

    out = []
    for folder in sorted(p for p in patient_dir.rglob("*") if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            continue
        match = SERIES_DIR.match(folder.name)
        number = int(match["number"]) if match else None
        description = match["description"] if match else folder.name
        try:
            ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["SeriesNumber", "SeriesDescription"])
            number = int(ds.SeriesNumber) if ds.get("SeriesNumber") not in (None, "") else number
            description = str(ds.get("SeriesDescription") or description)
        except Exception:  # noqa: BLE001 - not DICOM: keep the folder-name facts; reading it later reports why
            pass
        out.append(SeriesFolder(folder, number, description, files))
    return out


def classify(description: str) -> str | None:
    """``t2_tra`` / ``dwi`` / ``adc`` / None from a series description or folder name."""
    n = _norm(description)
    if "adc" in n:
        return "adc"
    if "t2" in n and "tra" in n and "sag" not in n and "cor" not in n:
        return "t2_tra"
    if any(k in n for k in ("diff", "dwi", "ep2d", "bval", "trace")):
        return "dwi"
    return None


def b_value(path: Path, description: str) -> float | None:
    """A DWI file's b-value: DiffusionBValue, else Siemens (0019,100C), else ``b<n>`` in the description;
    a computed series (``CALC_BVAL``) without any of these counts as the highest b (inf). None if unknown."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if ds.get("DiffusionBValue") is not None:
        return float(ds.DiffusionBValue)
    try:
        value = ds.private_block(SIEMENS_B_VALUE[0], SIEMENS_B_VALUE[1])[SIEMENS_B_VALUE[2]].value
        value = value.decode(errors="ignore") if isinstance(value, bytes) else value
        return float(str(value).strip("\x00 ").split("\\")[0])
    except (KeyError, ValueError, TypeError):
        pass
    if m := re.search(r"b(\d{2,4})(?!\d)", _norm(description)):
        return float(m[1])
    return float("inf") if "calcbval" in _norm(description) else None


def choose_series(series: list[SeriesFolder], referenced: set[int], needed: tuple = SEQUENCES,
                  ) -> dict[str, tuple[SeriesFolder, list[Path], str]]:
    """Per sequence of ``needed`` the chosen ``(series, files, note)``: T2/ADC prefer series the Images CSV refers
    to, then the highest series number (a repeat after motion); DWI is the (series, b) stack with the highest b.

    Raises:
        InputError: a sequence is missing (the message lists what was found).
    """
    by_kind: dict[str, list[SeriesFolder]] = {}
    for s in series:
        if kind := classify(s.description):
            by_kind.setdefault(kind, []).append(s)
    found = "; ".join(s.label for s in series) or "none"
    missing = [k for k in needed if not by_kind.get(k)]
    if missing:
        names = {"t2_tra": "transverse T2", "dwi": "DWI", "adc": "ADC"}
        raise InputError(series[0].path.parent if series else None,
                         f"no {' / '.join(names[m] for m in missing)} series (found: {found})")
    rank = lambda s: (s.number in referenced, s.number or 0)  # noqa: E731
    chosen = {k: (max(by_kind[k], key=rank), None, "") for k in ("t2_tra", "adc") if k in needed}
    chosen = {k: (s, s.files, "") for k, (s, _, _) in chosen.items()}
    if "dwi" not in needed:
        return chosen
    stacks = []
    for s in by_kind["dwi"]:
        groups: dict[float | None, list[Path]] = {}
        for f in s.files:
            groups.setdefault(b_value(f, s.description), []).append(f)
        for b, files in groups.items():
            stacks.append(((b if b is not None else -1.0), rank(s), s, files))
    b, _, s, files = max(stacks, key=lambda t: (t[0], t[1]))
    chosen["dwi"] = (s, files, "b unknown" if b < 0 else ("computed high b" if b == float("inf") else f"b={b:g}"))
    return chosen
