"""Per-lesion prediction for lesion-crop classifiers (``prostate-mpmri``, ``lung-nodules`` models): a study folder
plus a lesion list -> the converter's own crops -> the exported model -> probabilities CSV / JSON and overlay PNGs.

`ClassificationTask.predict` routes here by the model's ``kind`` (``medtf.json``). The crop is made by the
converter's functions (`tfrecords_builder.prostate_patches`, `tfrecords_builder.lung_nodules`) with the
converter's options that the export recorded in ``medtf.json`` ``conversion``, so a lesion gets exactly the
crop it would have had in the shards (same series choice rules, z-score, anti-aliasing, resize, windows).

Lesion files (CSV with a header row):

``prostate-mpmri`` (``--input``: one patient's study folder in the PROSTATEx layout, series folders below it)::

    lesion          optional id (else ``fid``, else the row number)
    x, y, z         lesion centre in mm, patient LPS (DICOM)  - or one column ``pos`` = "x y z" (Findings CSV)
    i, j, k         or: 0-based voxel (column, row, slice) of the transverse T2 - or one column ``ijk`` = "i j k"
    ProxID          optional: when present, rows of other patients (not the folder's name) are skipped

A row gives mm or T2 ijk (mm wins when both are filled). T2 and ADC are chosen as the converter chooses them
without an Images CSV (the highest series number), DWI is the stack with the highest b-value.

``lung-nodules`` (``--input``: the scan's CT DICOM folder): the LUNGx nodule CSV (``Scan Number, Nodule Number,
Nodule Center x,y Position, Nodule Center Image`` = InstanceNumber; ``Diagnosis`` optional); when it lists
several scans, the rows of the scan named like the input folder (or one of its parents) are used.

A lesion that cannot be cropped (outside the volume, unknown slice, bad numbers) is a ``failed`` row naming the
reason; the others are predicted. Outputs: ``lesions.csv`` (one row per lesion), ``prediction.json``,
``overlays/<lesion>.png`` (the crop's channels, the centre marked, the score written above).
"""

from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path

import numpy as np

from medtf.io.errors import InputError

LESION_KINDS = ("prostate-mpmri", "lung-nodules")


@dataclasses.dataclass
class Crop:
    lesion: str
    image: np.ndarray | None  # (H, W, C) float32, as stored in the shards
    centre: list | None       # mm LPS
    error: str | None = None


def _numbers(text, n, what):
    parts = [p for p in re.split(r"[\s,;]+", str(text).strip().strip("()[]")) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != n or not np.all(np.isfinite(values)):
        raise ValueError(f"{what} {text!r} is not {n} numbers")
    return values


def read_prostate_lesions(path: Path, patient: str | None) -> list[tuple[str, list | None, list | None, str]]:
    """``(lesion id, mm or None, ijk or None, problem)`` per row of a prostate lesion CSV (module docstring)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the lesion CSV ({type(exc).__name__})") from None
    has_mm = "pos" in columns or {"x", "y", "z"} <= set(columns)
    has_ijk = "ijk" in columns or {"i", "j", "k"} <= set(columns)
    if not (has_mm or has_ijk):
        raise InputError(path, f"lesion CSV needs x,y,z (or pos) in mm LPS or i,j,k (or ijk) T2 voxel columns; "
                               f"its columns: {columns}")
    out = []
    for n, row in enumerate(rows, start=1):
        if patient is not None and row.get("ProxID") and row["ProxID"] != patient:
            continue
        lesion = row.get("lesion") or row.get("fid") or str(n)
        mm = row.get("pos") or (" ".join(row[c] for c in "xyz") if all(row.get(c) for c in "xyz") else "")
        ijk = row.get("ijk") or (" ".join(row[c] for c in "ijk") if all(row.get(c) for c in "ijk") else "")
        try:
            if mm:
                out.append((lesion, _numbers(mm, 3, "x y z (mm)"), None, ""))
            elif ijk:
                out.append((lesion, None, _numbers(ijk, 3, "T2 i j k"), ""))
            else:
                out.append((lesion, None, None, "neither x,y,z (mm) nor i,j,k (T2 voxel) is filled"))
        except ValueError as exc:
            out.append((lesion, None, None, str(exc)))
    return out


def prostate_crops(study: Path, lesions: Path, settings: dict) -> list[Crop]:
    from tfrecords_builder.prostate_patches import check_centre, inside, lesion_patch, load_sequences

    patient = _patient(study, lesions) if "ProxID" in _header(lesions) else None
    rows = read_prostate_lesions(lesions, patient)
    if not rows:
        raise InputError(lesions, f"no lesion rows{' for this patient (ProxID column)' if patient else ''}")
    seq = load_sequences(study, set(), settings)
    t2 = seq.volumes["t2_tra"]
    crops = []
    for lesion, mm, ijk, problem in rows:
        try:
            if problem:
                raise ValueError(problem)
            if ijk is not None:
                if not inside(t2, ijk, margin=0.0):
                    raise ValueError(f"T2 voxel i j k {ijk} lies outside the T2 image of {t2.shape_xyz} voxels")
                mm = t2.index_to_physical(ijk)
            check_centre(seq, mm)
            crops.append(Crop(lesion, lesion_patch(seq, mm, settings), [float(v) for v in mm]))
        except ValueError as exc:
            crops.append(Crop(lesion, None, None, str(exc)))
    return crops


def lung_crops(study: Path, lesions: Path, settings: dict) -> list[Crop]:
    from tfrecords_builder.lung_nodules import load_ct, nodule_patch
    from tfrecords_builder.lungx_layout import read_nodules

    nodules = read_nodules(lesions, need_diagnosis=False)
    names = [p.name for p in (study, *study.parents)]
    scan = next((n for n in names if n in nodules), None)
    if scan is None and len(nodules) != 1:
        raise InputError(lesions, f"lists {len(nodules)} scans and none is named like the input folder or its "
                                  "parents; give a CSV with this scan's rows only")
    rows = nodules[scan if scan is not None else next(iter(nodules))]
    ct = load_ct(study, settings)
    crops = []
    for nodule in rows:
        lesion = f"{nodule.number}" if nodule.number else f"row{nodule.row}"
        try:
            patch, centre, _ = nodule_patch(ct, nodule, settings)
            crops.append(Crop(lesion, patch, [float(v) for v in centre]))
        except ValueError as exc:
            crops.append(Crop(lesion, None, None, f"CSV row {nodule.row}: {exc}"))
    return crops


CROPPERS = {"prostate-mpmri": prostate_crops, "lung-nodules": lung_crops}


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [c.strip() for c in next(csv.reader(fh), [])]
    except (OSError, UnicodeDecodeError):
        return []


def _patient(study: Path, lesions: Path) -> str | None:
    """The CSV's ProxID of the study: the folder's or a parent's name (the patient or the dated study folder);
    None (all rows) when the CSV names one patient only."""
    with open(lesions, newline="", encoding="utf-8-sig") as fh:
        listed = {(row.get("ProxID") or "").strip() for row in csv.DictReader(fh)} - {""}
    found = next((p.name for p in (study, *study.parents) if p.name in listed), None)
    if found is None and len(listed) > 1:
        raise InputError(lesions, f"its ProxID column lists {len(listed)} patients and none is the input folder's "
                                  "(or a parent's) name; give a CSV with this patient's rows only")
    return found


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:64] or "lesion"


def overlay(image: np.ndarray, text: str, zoom: int = 4) -> np.ndarray:
    """``(H, W, C)`` crop -> uint8 RGB: channels side by side (each min-max scaled), a red cross on the centre
    pixel, ``text`` in a strip above."""
    from PIL import Image, ImageDraw

    h, w, c = image.shape
    tiles = []
    for k in range(c):
        ch = image[..., k].astype(np.float64)
        lo, hi = float(ch.min()), float(ch.max())
        grey = np.uint8(255 * (ch - lo) / (hi - lo)) if hi > lo else np.zeros((h, w), np.uint8)
        tile = np.repeat(np.repeat(np.stack([grey] * 3, -1), zoom, 0), zoom, 1)
        cy, cx = (h // 2) * zoom + zoom // 2, (w // 2) * zoom + zoom // 2
        arm = 3 * zoom
        tile[cy, max(0, cx - arm):cx + arm] = tile[max(0, cy - arm):cy + arm, cx] = (255, 0, 0)
        tiles.append(tile)
    strip = 18
    out = Image.new("RGB", (c * (w * zoom + 4) - 4, h * zoom + strip))
    for k, tile in enumerate(tiles):
        out.paste(Image.fromarray(tile), (k * (w * zoom + 4), strip))
    ImageDraw.Draw(out).text((3, 3), text, fill=(255, 255, 0))
    return np.asarray(out)


def predict_lesions(model_dir, meta: dict, served, input_path, lesions, output, threshold: float) -> dict:
    """Crop every lesion of ``lesions`` in the study ``input_path``, predict with the signature ``served``, write
    the outputs (module docstring) into ``output``; returns the summary written to prediction.json."""
    import tensorflow as tf

    from medtf.data.alignment import write_png_atomic

    kind = meta.get("kind")
    settings = meta.get("conversion")
    if kind not in CROPPERS:
        raise ValueError(f"--lesions is for models trained on lesion crops ({', '.join(LESION_KINDS)}); this "
                         f"model's kind is {kind}")
    if not settings:
        raise ValueError(f"{model_dir}: medtf.json has no 'conversion' record (crop size, channels, normalisation); "
                         "export the run again with its shards at data.dir, so the export can read them")
    study, lesions = Path(input_path), Path(lesions)
    if not study.is_dir():
        raise InputError(study, "not a folder: --input takes the study's DICOM folder (with --lesions)")
    if not lesions.is_file():
        raise InputError(lesions, "lesion file not found")
    crops = CROPPERS[kind](study, lesions, settings)
    out = Path(output)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    rows = []
    for crop in crops:
        row = {"lesion": crop.lesion, "status": "failed" if crop.error else "ok", "centre_mm": crop.centre,
               "probabilities": None, "class": None, "error": crop.error}
        if crop.error is None:
            if crop.image.shape[-1] != meta.get("in_channels", crop.image.shape[-1]):
                raise ValueError(f"the crop has {crop.image.shape[-1]} channel(s), the model takes "
                                 f"{meta['in_channels']}: medtf.json's conversion record does not match the model")
            p = served(images=tf.constant(crop.image[None], tf.float32))["probabilities"].numpy()[0]
            row["probabilities"] = [float(v) for v in p]
            row["class"] = int(p[0] >= threshold) if len(p) == 1 else int(p.argmax())
            score = f"p={p[0]:.3f}" if len(p) == 1 else f"class {row['class']} p={p.max():.3f}"
            png = out / "overlays" / f"{_safe(crop.lesion)}.png"
            write_png_atomic(png, overlay(crop.image, f"lesion {crop.lesion}  {score}"))
            row["overlay"] = str(png.relative_to(out))
        rows.append(row)
    k = max((len(r["probabilities"]) for r in rows if r["probabilities"]), default=1)
    with open(out / "lesions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lesion", "status", *(["p_positive"] if k == 1 else [f"p_class{c}" for c in range(k)]),
                         "class", "centre_x_mm", "centre_y_mm", "centre_z_mm", "error"])
        for r in rows:
            probs = [f"{v:.6f}" for v in r["probabilities"]] if r["probabilities"] else [""] * k
            centre = [f"{v:.3f}" for v in r["centre_mm"]] if r["centre_mm"] else [""] * 3
            writer.writerow([r["lesion"], r["status"], *probs, "" if r["class"] is None else r["class"], *centre,
                             r["error"] or ""])
    return {"kind": kind, "lesions": rows, "failed": sum(r["status"] == "failed" for r in rows),
            "conversion": settings}
