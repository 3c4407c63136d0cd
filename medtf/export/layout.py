"""TF Serving's model layout: ``BASE/NAME/VERSION/{saved_model.pb, variables/, medtf.json}``.

TF Serving loads the highest numeric version below ``BASE/NAME`` and ignores other entries, so the exporter writes
into a hidden temporary folder next to the versions and renames it into place: a server (or `medtf predict`)
never sees a half-written version, and an existing version is never replaced.

Example:
    >>> next_version("runs/brachy/export/unet3d")      # 1 for an empty folder, max + 1 otherwise
    >>> resolve_model_dir("runs/brachy/export/unet3d") # .../unet3d/<highest version>
"""

from __future__ import annotations

import os
from pathlib import Path

METADATA_FILE = "medtf.json"


class ExportError(RuntimeError):
    """A model cannot be exported or an exported model cannot be found/used (message says why)."""


def versions(model_base: str | os.PathLike) -> list[int]:
    """Numeric version folders below ``model_base``, ascending (non-numeric entries are ignored, as TF Serving does)."""
    base = Path(model_base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_base: str | os.PathLike) -> int:
    """The version a new export gets: one more than the highest existing one (1 for a new model)."""
    found = versions(model_base)
    return (found[-1] + 1) if found else 1


def publish(tmp_dir: Path, target: Path) -> Path:
    """Rename a finished ``tmp_dir`` to ``target``; never replaces an existing version.

    ``os.rename`` fails on POSIX when ``target`` is a non-empty folder and replaces an empty one, so an existing
    version with content can never be overwritten even when two exports race for the same number.
    """
    if target.exists() and any(target.iterdir()):
        raise ExportError(f"version {target.name} already exists in {target.parent}; versions are never overwritten "
                          "(omit --version to get the next free number)")
    try:
        os.rename(tmp_dir, target)
    except OSError as exc:
        raise ExportError(f"cannot publish {target} ({exc}); versions are never overwritten") from None
    return target


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A version folder (holding ``saved_model.pb``) or a model folder (-> its highest version).

    Raises:
        ExportError: nothing exported there.
    """
    path = Path(path)
    if (path / "saved_model.pb").is_file():
        return path
    found = versions(path)
    if found:
        candidate = path / str(found[-1])
        if (candidate / "saved_model.pb").is_file():
            return candidate
    raise ExportError(f"{path}: not an exported model (expected saved_model.pb there or in a numeric version "
                      "folder, as written by `medtf export`)")
