"""``medtf predict`` for nucleus classifiers: an H&E tile + nucleus boxes or an instance map -> per-nucleus classes.

Inputs: ``--input`` a PNG / TIFF RGB tile (raw 0-255); nuclei from ``--boxes`` (CSV with columns ``ymin, xmin, ymax,
xmax`` and optional ``id``; or JSON: a list of ``[ymin, xmin, ymax, xmax]`` / of objects with those keys and an
optional ``id``, or ``{"boxes": [...]}``) or ``--instances`` (a PNG / TIFF / ``.npy`` integer map the size of the
tile, 0 = background, one id per nucleus; boxes as the nuclei-he converter draws them). Boxes are in image pixels
with corner coordinates (a box ``[1, 2, 3, 5]`` covers rows 1-2 and columns 2-4).

A tile larger than the model's image size is read through model-sized windows on a half-window grid; every
nucleus is classified in the window whose centre is nearest its own (so it sees context on all sides), its box in
that window's coordinates, together with the other nuclei overlapping that window (nucleus tokens attend to each
other, as in training; `classify_tile`). A tile smaller than the model is refused.

Outputs in ``OUTPUT``:
- ``nuclei.csv``: id, ymin, xmin, ymax, xmax, class, then ``p_<class>`` per class;
- ``nuclei.geojson``: a FeatureCollection QuPath imports (File > Import objects): one ``detection`` Polygon per
  nucleus (its instance outline along pixel edges, or its box) in image pixel coordinates (x right, y down),
  ``properties.classification {name, color [r, g, b]}``, ``properties.probabilities`` and the same values as
  ``properties.measurements`` (``p_<class>``, shown in QuPath's measurement table);
- ``overlay.png``: the tile with every nucleus outlined in its class colour; ``prediction.json``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from medtf.io import InputError

# Class colours (RGB) by class index: distinct on H&E pink/purple; QuPath shows them for the classifications.
PALETTE = [(255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 200, 0), (255, 0, 255), (0, 220, 220), (255, 120, 0),
           (150, 60, 255)]
BOX_KEYS = ("ymin", "xmin", "ymax", "xmax")


def _box_rows(path: Path) -> list[tuple[str | None, list]]:
    """``(id or None, [ymin, xmin, ymax, xmax])`` per box of a CSV / JSON file, as written (not yet checked)."""
    text = path.read_text(encoding="utf-8").strip() if path.is_file() else None
    if text is None:
        raise InputError(path, "boxes file does not exist")
    if not text:
        raise InputError(path, "boxes file is empty (expected a CSV with ymin,xmin,ymax,xmax or a JSON box list)")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(path, f"not valid JSON ({exc})") from None
        data = data.get("boxes") if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise InputError(path, "expected a JSON list of boxes or {\"boxes\": [...]}")
        return [(str(b["id"]) if "id" in b else None, [b.get(k) for k in BOX_KEYS]) if isinstance(b, dict)
                else (None, b) for b in data]
    reader = csv.DictReader(text.splitlines())
    missing = [k for k in BOX_KEYS if k not in (reader.fieldnames or [])]
    if missing:
        raise InputError(path, f"CSV header {reader.fieldnames} lacks the columns {missing} (needs ymin,xmin,ymax,"
                               f"xmax and optionally id)")
    return [(row.get("id") or None, [row[k] for k in BOX_KEYS]) for row in reader]


def read_boxes(path, height: int, width: int) -> tuple[list[str], np.ndarray]:
    """Nucleus ids (the file's, else ``1..N``) and float32 ``(N, 4)`` boxes of a boxes file, checked against an
    ``height x width`` tile. Raises `InputError` naming the file and the first bad box."""
    path = Path(path)
    rows = _box_rows(path)
    if not rows:
        raise InputError(path, "no boxes in the file")
    ids, boxes = [], []
    for i, (ident, box) in enumerate(rows):
        label = ident if ident is not None else str(i + 1)
        try:
            values = [float(v) for v in box]
        except (TypeError, ValueError):
            values = []
        if len(values) != 4 or not np.all(np.isfinite(values)):
            raise InputError(path, f"box {label} (row {i + 1}) is not 4 numbers ymin, xmin, ymax, xmax: {box}")
        ymin, xmin, ymax, xmax = values
        if ymax <= ymin or xmax <= xmin:
            raise InputError(path, f"box {label} (row {i + 1}) is empty or inverted: {values}")
        if ymin < 0 or xmin < 0 or ymax > height or xmax > width:
            raise InputError(path, f"box {label} (row {i + 1}) {values} is outside the image ({height} x {width} "
                                   f"pixels, boxes as ymin, xmin, ymax, xmax)")
        ids.append(label)
        boxes.append(values)
    if len(set(ids)) != len(ids):
        raise InputError(path, "nucleus ids are not unique")
    return ids, np.asarray(boxes, np.float32)


def read_instances(path, height: int, width: int) -> np.ndarray:
    """An integer instance map ``(H, W)`` (PNG / TIFF / .npy) the size of the tile, with at least one nucleus."""
    from medtf.io import read_slice_2d

    path = Path(path)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise InputError(path, "instance map does not exist")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(path, f"cannot read the .npy instance map ({exc})") from None
    else:
        array = read_slice_2d(path).array
    array = np.asarray(array)
    if array.ndim != 2 or not (np.issubdtype(array.dtype, np.integer) or np.all(array == np.round(array))):
        raise InputError(path, f"expected a 2D integer instance map, got {array.dtype} {array.shape}")
    if array.shape != (height, width):
        raise InputError(path, f"instance map is {array.shape[0]} x {array.shape[1]}, the tile {height} x {width}")
    if array.min() < 0 or not array.any():
        raise InputError(path, "instance map has no nuclei (all 0) or negative ids")
    return array.astype(np.int64)


def instance_polygon(mask: np.ndarray) -> list[list[float]]:
    """The outer outline of the pixels of ``mask`` along pixel edges, ``[[x, y], ...]`` closed, positive shoelace
    area in (x right, y down) coordinates; of the largest part when the mask has several. A hole-free mask's
    outline encloses exactly its pixel count."""
    m = np.pad(np.asarray(mask, bool), 1)
    r, c = np.nonzero(m)
    edges = {}  # start corner -> end corners; corners (x, y) of the unpadded image
    for dr, dc, a, b in ((-1, 0, (0, 0), (1, 0)), (0, 1, (1, 0), (1, 1)), (1, 0, (1, 1), (0, 1)),
                         (0, -1, (0, 1), (0, 0))):  # top, right, bottom, left edges facing the background
        open_ = ~m[r + dr, c + dc]
        for y, x in zip(r[open_] - 1, c[open_] - 1):
            edges.setdefault((x + a[0], y + a[1]), []).append((x + b[0], y + b[1]))
    loops = []
    while edges:
        start = next(iter(edges))
        loop, point = [start], start
        while True:
            ends = edges[point]
            nxt = ends.pop()
            if not ends:
                del edges[point]
            if nxt == start:
                break
            loop.append(nxt)
            point = nxt
        loops.append(loop)
    best = max(loops, key=_area)
    keep = [p for i, p in enumerate(best)  # drop collinear corners
            if (best[i - 1][0] - p[0]) * (best[(i + 1) % len(best)][1] - p[1])
            != (best[i - 1][1] - p[1]) * (best[(i + 1) % len(best)][0] - p[0])]
    return [[float(x), float(y)] for x, y in keep + keep[:1]]


def _area(ring) -> float:
    x, y = np.asarray(ring, float).T
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)))


def box_polygon(box) -> list[list[float]]:
    ymin, xmin, ymax, xmax = (float(v) for v in box)
    return [[xmin, ymin], [xmax, ymin], [xmax, ymax], [xmin, ymax], [xmin, ymin]]


def window_starts(size: int, window: int) -> np.ndarray:
    """Window offsets along one axis: a half-window grid plus one flush with the end."""
    return np.unique(np.append(np.arange(0, size - window + 1, max(window // 2, 1)), size - window))


def classify_tile(served, image: np.ndarray, boxes: np.ndarray, image_hw, slots: int) -> np.ndarray:
    """Probabilities ``(N, K)`` of ``boxes`` on a raw ``(H, W, C)`` tile through the ``classify_all`` signature.

    Nucleus tokens attend to each other, so a nucleus is classified with the other nuclei around it as in training
    (a training tile holds all its nuclei): each nucleus goes to its nearest model-sized window; a call holds up
    to ``slots`` of the window's own nuclei, then fills the free slots with the other boxes that overlap the
    window (clipped to it), whose outputs are not used."""
    import tensorflow as tf

    (h, w), (height, width) = image_hw, image.shape[:2]
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    ys, xs = window_starts(height, h), window_starts(width, w)
    wy = ys[np.abs(ys[None] + h / 2 - centres[:, :1]).argmin(1)]
    wx = xs[np.abs(xs[None] + w / 2 - centres[:, 1:]).argmin(1)]
    probs = [None] * len(boxes)
    for y0, x0 in sorted(set(zip(wy.tolist(), wx.tolist()))):
        own = (wy == y0) & (wx == x0)
        overlaps = ((boxes[:, 0] < y0 + h) & (boxes[:, 2] > y0) & (boxes[:, 1] < x0 + w) & (boxes[:, 3] > x0))
        members, context = np.nonzero(own)[0], np.nonzero(overlaps & ~own)[0]
        crop = tf.constant(image[None, y0:y0 + h, x0:x0 + w], tf.float32)
        local = np.clip(boxes - np.array([y0, x0, y0, x0], np.float32), 0, [h, w, h, w]).astype(np.float32)
        for start in range(0, len(members), slots):
            chunk = members[start:start + slots]
            call = np.concatenate([chunk, context[:slots - len(chunk)]])
            out = served(images=crop, boxes=tf.constant(local[call][None]))["probabilities"].numpy()[0]
            for i, p in zip(chunk, out):
                probs[i] = p
    return np.stack(probs).astype(np.float64)


def overlay_nuclei(image: np.ndarray, regions: list, colours: list) -> np.ndarray:
    """uint8 RGB: the tile with the boundary pixels of every nucleus region (boolean ``(H, W)``) in its colour."""
    from medtf.export.writers import contour

    out = np.clip(np.asarray(image, np.float64), 0, 255).astype(np.uint8).copy()
    for region, colour in zip(regions, colours):
        out[contour(region)] = colour
    return out


def box_region(box, height: int, width: int) -> np.ndarray:
    """The pixels a box covers (rows ``floor(ymin) .. ceil(ymax) - 1``, likewise columns)."""
    ymin, xmin, ymax, xmax = int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3]))
    region = np.zeros((height, width), bool)
    region[ymin:ymax, xmin:xmax] = True
    return region


def predict_nuclei(model_dir, input_path, output, boxes=None, instances=None) -> dict:
    """Classify the nuclei of one tile with an exported model (or a run directory, exported to a temporary folder
    first); writes the files of the module docstring and returns the summary."""
    import tensorflow as tf
    from PIL import Image

    from medtf.tasks.classification import read_for_predict

    if (boxes is None) == (instances is None):
        raise ValueError("nucleus classifiers need exactly one of --boxes FILE or --instances FILE")
    if (Path(model_dir) / "config.yaml").is_file():  # a training run: export its best checkpoint for this call
        import tempfile

        from medtf.tasks.nucleus_export import export_nucleus_classifier

        with tempfile.TemporaryDirectory(prefix="medtf-nuclei-") as tmp:
            exported = export_nucleus_classifier(model_dir, output=tmp, version=1)
            summary = predict_nuclei(exported, input_path, output, boxes, instances)
        return {**summary, "model": str(model_dir)}
    model_dir, meta, paths, images = read_for_predict(model_dir, input_path)
    if len(images) != 1:
        raise InputError(input_path, f"expected one tile, found {len(images)} files (one boxes file per tile)")
    image = images[0]
    (height, width), (h, w) = image.shape[:2], meta["image_size"]
    if image.ndim != 3 or image.shape[-1] != meta["in_channels"]:
        raise InputError(paths[0], f"expected an image with {meta['in_channels']} channels, got {image.shape}")
    if height < h or width < w:
        raise InputError(paths[0], f"tile {height} x {width} is smaller than the model's input {h} x {w}")
    if instances is not None:
        from tfrecords_builder.nuclei_tiles import boxes_from_instances

        labels = read_instances(instances, height, width)
        numbers, box_array = boxes_from_instances(labels)
        ids = [str(n) for n in numbers]
        rings = [instance_polygon(labels == n) for n in numbers]
    else:
        ids, box_array = read_boxes(boxes, height, width)
        rings = [box_polygon(b) for b in box_array]
    served = tf.saved_model.load(str(model_dir)).signatures["classify_all"]
    probs = classify_tile(served, image, box_array, (h, w), int(meta["max_nuclei"]))
    names = list(meta["class_names"])
    predicted = probs.argmax(1)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "nuclei.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", *BOX_KEYS, "class", *[f"p_{n}" for n in names]])
        for ident, box, k, p in zip(ids, box_array, predicted, probs):
            writer.writerow([ident, *[f"{v:g}" for v in box], names[k], *[f"{v:.6f}" for v in p]])
    colours = [list(PALETTE[k % len(PALETTE)]) for k in predicted]
    features = [{"type": "Feature", "id": f"nucleus-{ident}",
                 "geometry": {"type": "Polygon", "coordinates": [ring]},
                 "properties": {"objectType": "detection", "name": f"nucleus {ident}",
                                "classification": {"name": names[k], "color": colour},
                                "probabilities": {n: round(float(v), 6) for n, v in zip(names, p)},
                                "measurements": {f"p_{n}": round(float(v), 6) for n, v in zip(names, p)}}}
                for ident, ring, k, colour, p in zip(ids, rings, predicted, colours, probs)]
    (out / "nuclei.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}) + "\n",
                                        encoding="utf-8")
    regions = ([labels == n for n in numbers] if instances is not None
               else [box_region(b, height, width) for b in box_array])
    Image.fromarray(overlay_nuclei(image, regions, colours)).save(out / "overlay.png")
    summary = {"task": "nucleus_classification", "model": str(model_dir), "input": str(paths[0]),
               "nuclei_from": "instances" if instances is not None else "boxes", "class_names": names,
               "files": ["nuclei.csv", "nuclei.geojson", "overlay.png"],
               "predictions": [{"nucleus": i, "class": names[k]} for i, k in zip(ids, predicted)]}
    (out / "prediction.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
