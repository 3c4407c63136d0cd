"""``manifest.json``: the contract between the converters, the readers and ``medtf verify``.

The manifest is written last, atomically; a folder without one is an unfinished conversion. Readers take the
shard list from here, never from a glob.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

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


def fold_splits(manifest: Mapping, k: int) -> tuple[list[str], str]:
    """Cross-validation round ``k``: ``(train splits = every other fold, validation split = fold k)``.

    Raises:
        ManifestError: the manifest has no ``fold-*`` splits.
        ValueError: ``k`` is not one of its folds.

    Example:
        >>> fold_splits({"splits": {"fold-0": {}, "fold-1": {}, "fold-2": {}}}, 1)
        (['fold-0', 'fold-2'], 'fold-1')
    """
    folds = fold_names(manifest)
    if not folds:
        raise ManifestError(f"not a K-fold manifest (splits: {list(manifest['splits'])})")
    if not 0 <= k < len(folds):
        raise ValueError(f"fold {k} out of range: the manifest has {len(folds)} folds")
    return [f for f in folds if f != f"fold-{k}"], f"fold-{k}"
