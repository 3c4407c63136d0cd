"""Exported models: TF Serving SavedModels of training runs (``medtf export``) and inference (``medtf predict``).

Example:
    >>> from medtf.export import export_run, predict_path
    >>> version_dir = export_run("runs/brachy")                          # runs/brachy/export/unet3d/1
    >>> summary = predict_path(version_dir.parent, "patient/ct", "out/")   # mask.nii.gz, seg.dcm, overlays, json
"""

from medtf.export.layout import ExportError, next_version, resolve_model_dir, versions
from medtf.export.normalization import Preprocessor
from medtf.export.predict import ExportedModel, predict_path, read_input
from medtf.export.saved_model import export_run, read_run

__all__ = ["ExportError", "ExportedModel", "Preprocessor", "export_run", "next_version", "predict_path",
           "read_input", "read_run", "resolve_model_dir", "versions"]
