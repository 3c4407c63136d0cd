"""``manifest.json``: the contract between the converters, the readers and ``medtf verify``.

The manifest is written last, atomically; a folder without one is an unfinished conversion. Readers take the
shard list from here, never from a glob.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple

MANIFEST_NAME = "manifest.json"
FORMAT = "medtf-tfrecords"
FORMAT_VERSION = 1


class ManifestError(Exception):
    pass


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_manifest(folder: str | os.PathLike, manifest: dict) -> Path:
    path = Path(folder) / MANIFEST_NAME
    write_json_atomic(path, manifest)
    return path


def read_manifest(folder: str | os.PathLike) -> dict:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest (not a medtf shard folder, or the conversion did not finish)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format version {manifest['format_version']} is newer than this medtf understands "
            f"({FORMAT_VERSION}); upgrade medtf"
        )
    return manifest


def shard_paths(folder: str | os.PathLike, manifest: dict, split: str | None = None) -> list[Path]:
    """Shard files of one split (or all splits) in manifest order."""
    splits = [split] if split else list(manifest["splits"])
    unknown = [s for s in splits if s not in manifest["splits"]]
    if unknown:
        raise ManifestError(f"split(s) {unknown} not in manifest; available: {list(manifest['splits'])}")
    return [Path(folder) / s["file"] for name in splits for s in manifest["splits"][name]["shards"]]


def fold_names(manifest: Mapping) -> list[str]:
    """``["fold-0", ..., "fold-{K-1}"]`` of a K-fold manifest, in fold order (empty for train/val/test manifests).

    The one place that knows how `medtf convert --folds K` names its splits (`medtf.data.splits.assign_folds`).

    Example:
        >>> fold_names({"splits": {"test": {}, "fold-1": {}, "fold-0": {}, "fold-10": {}}})
        ['fold-0', 'fold-1', 'fold-10']
    """
    folds = [name for name in manifest["splits"] if name.startswith("fold-") and name[5:].isdigit()]
    return sorted(folds, key=lambda name: int(name[5:]))


SELECTION_FOLDS = ("inner", "outer")


class FoldSplits(NamedTuple):
    """The three roles of cross-validation round ``k``: what trains, what chooses, what is scored."""

    train: list[str]
    selection: str
    held_out: str


def nested_fold_splits(manifest: Mapping, k: int, selection: str = "inner") -> FoldSplits:
    """Cross-validation round ``k``: ``(training folds, selection fold, held-out fold-k)``.

    The one place that says which fold does what; training inputs, roulette, transfer chains, their scratch
    baseline, the tuner and the export fingerprint all ask here. ``selection`` is ``data.selection_fold``:

    * ``inner`` (default): the fold after ``k`` in fold order, ``fold-((k + 1) mod K)``, chooses (best checkpoint,
      early stopping, ReduceLROnPlateau, roulette); the other K-2 folds train; fold-k is touched only by the final
      evaluation, so the cross-validated figure is not the one the choices were made on. Needs K >= 3.
    * ``outer``: fold-k both chooses and is scored (the behaviour before nested selection; optimistic).

    Raises:
        ManifestError: the manifest has no ``fold-*`` splits.
        ValueError: ``k`` is not one of its folds, ``selection`` is unknown, or ``inner`` with fewer than 3 folds.

    Example:
        >>> nested_fold_splits({"splits": {f"fold-{j}": {} for j in range(5)}}, 4)
        FoldSplits(train=['fold-1', 'fold-2', 'fold-3'], selection='fold-0', held_out='fold-4')
    """
    folds = fold_names(manifest)
    if not folds:
        raise ManifestError(f"not a K-fold manifest (splits: {list(manifest['splits'])})")
    if selection not in SELECTION_FOLDS:
        raise ValueError(f"selection_fold {selection!r}: one of {', '.join(SELECTION_FOLDS)}")
    held_out = f"fold-{k}"
    if isinstance(k, bool) or held_out not in folds:
        raise ValueError(f"fold {k} out of range: the manifest has {len(folds)} folds")
    if selection == "outer":
        return FoldSplits([f for f in folds if f != held_out], held_out, held_out)
    if len(folds) < 3:
        raise ValueError(f"selection_fold 'inner' needs at least 3 folds (training, selection, held-out), but the "
                         f"manifest has {len(folds)}: convert with --folds 3 or more, or set data.selection_fold: "
                         f"outer (chooses on the held-out fold itself: optimistic)")
    chooser = folds[(folds.index(held_out) + 1) % len(folds)]  # the next fold in fold order, wrapping around
    return FoldSplits([f for f in folds if f not in (held_out, chooser)], chooser, held_out)


def fold_splits(manifest: Mapping, k: int, selection: str = "outer") -> tuple[list[str], str]:
    """``(train splits, validation split)`` of round ``k``: `nested_fold_splits` without the held-out fold
    (default ``outer``: every other fold trains, fold k validates).

    Example:
        >>> fold_splits({"splits": {"fold-0": {}, "fold-1": {}, "fold-2": {}}}, 1)
        (['fold-0', 'fold-2'], 'fold-1')
    """
    roles = nested_fold_splits(manifest, k, selection)
    return roles.train, roles.selection
