"""The class shares a classification run trains on: counted over the training split's shards, then as the
``data.class_balance`` method changes them (`medtf.data.balance`), logged once when `medtf train` starts and
written to ``RUN_DIR/class_shares.json``.

- no balance: the stored shares of the labelled examples;
- ``augmentation_factor`` (the thesis's way): the minority class counted ``factor`` times;
- ``oversample``: the target shares of the classes that have examples (a class without any gets none; its
  share goes to the others, as `medtf.data.balance.oversample` does).

Examples with an unknown label (``-1``: the PROSTATEx challenge test findings) are dropped from training by the
kind's parser filter and counted apart. Only the ``label`` field is parsed, so counting is cheap.

Example:
    >>> report = class_share_report(experiment.data)
    >>> report["training_shares"]      # {"0": 0.5, "1": 0.5} with oversample weights {0: 1, 1: 1}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FILE = "class_shares.json"


def label_counts(data_dir, splits) -> dict[int, int]:
    """``{label: examples}`` over the shards of ``splits`` (the stored ``label`` field only)."""
    import tensorflow as tf

    from medtf.data.decoder import feature_spec
    from medtf.data.manifest import read_manifest, shard_paths
    from medtf.data.schema import get_schema

    manifest = read_manifest(data_dir)
    spec = {"label": feature_spec(get_schema(manifest["kind"]))["label"]}
    names = [splits] if isinstance(splits, str) else list(splits)
    files = [str(p) for s in names for p in shard_paths(data_dir, manifest, s)]
    ds = tf.data.TFRecordDataset(files, compression_type=manifest.get("compression") or "")
    labels = ds.map(lambda r: tf.reshape(tf.io.parse_single_example(r, spec)["label"], [-1])[0]).batch(4096)
    counts: dict[int, int] = {}
    for batch in labels.as_numpy_iterator():
        for value, n in zip(*np.unique(batch, return_counts=True)):
            counts[int(value)] = counts.get(int(value), 0) + int(n)
    return dict(sorted(counts.items()))


def training_shares(counts: dict[int, int], balance: dict | None, classes=None) -> dict[int, float]:
    """Expected share per class of the training stream, from the labelled ``counts`` and the balance config."""
    from medtf.data.balance import class_shares

    counts = {c: n for c, n in counts.items() if n > 0}
    if balance is None or balance["method"] == "augmentation_factor":
        weighted = dict(counts)
        if balance is not None and int(balance["minority"]) in weighted:
            weighted[int(balance["minority"])] *= int(balance["factor"])
    else:
        weighted = {c: w for c, w in class_shares(balance, classes).items() if c in counts}
    total = float(sum(weighted.values()))
    return {c: (w / total if total else 0.0) for c, w in sorted(weighted.items())}


def class_share_report(data) -> dict | None:
    """``{"splits", "method", "stored", "unlabelled", "stored_shares", "training_shares"}`` for the training
    split(s) of the typed ``data`` section; None when the kind stores no ``label`` (classes come from masks)."""
    from medtf.data import balance as balance_lib
    from medtf.data.manifest import read_manifest
    from medtf.data.schema import get_schema
    from medtf.training.inputs import split_names

    manifest = read_manifest(data.dir)
    if "label" not in {f.name for f in get_schema(manifest["kind"]).fields}:
        return None
    splits = split_names(data)[0]
    counts = label_counts(data.dir, splits)
    labelled = {c: n for c, n in counts.items() if c >= 0}
    balance = balance_lib.validate_class_balance(data.class_balance)
    classes = range(len((manifest.get("options") or {}).get("class_names") or [])) or None  # as the pipeline
    total = sum(labelled.values())
    return {"splits": [splits] if isinstance(splits, str) else list(splits),
            "method": balance["method"] if balance else None, "class_balance": balance,
            "stored": {str(c): n for c, n in labelled.items()},
            "unlabelled": sum(n for c, n in counts.items() if c < 0),
            "stored_shares": {str(c): n / total for c, n in labelled.items()} if total else {},
            "training_shares": {str(c): s for c, s in training_shares(labelled, balance, classes).items()}}


def format_report(report: dict) -> str:
    """One line: ``class shares seen in training (oversample): 0 50.0%, 1 50.0% | stored: 0 18 (75.0%), ...``."""
    seen = ", ".join(f"{c} {100 * s:.1f}%" for c, s in report["training_shares"].items())
    stored = ", ".join(f"{c} {n} ({100 * report['stored_shares'][c]:.1f}%)" for c, n in report["stored"].items())
    extra = f", {report['unlabelled']} unlabelled not used" if report["unlabelled"] else ""
    return (f"class shares seen in training ({report['method'] or 'as stored'}): {seen} | stored in "
            f"{'+'.join(report['splits'])}: {stored}{extra}")


def write_report(report: dict, run_dir) -> Path:
    path = Path(run_dir) / FILE
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def report_class_shares(data, run_dir) -> dict | None:
    """`class_share_report` of the typed ``data`` section, printed once (stdout) and written to
    ``RUN_DIR/class_shares.json``; None (nothing written) for kinds without a ``label``."""
    report = class_share_report(data)
    if report is not None:
        write_report(report, run_dir)
        print(format_report(report), flush=True)
    return report
