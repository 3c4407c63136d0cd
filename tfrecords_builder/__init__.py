"""Converters from public/clinical source layouts to medtf TFRecord shards (one module per layout).

Each module has a ``main()`` and a `Converter` subclass; `medtf convert KIND` dispatches here.
"""

import importlib

CONVERTERS = {
    "brachy-ct": ("tfrecords_builder.brachy_ct", "BrachyCtConverter"),
    "lgg-mri": ("tfrecords_builder.lgg_mri", "LggMriConverter"),
    "prostate-mpmri": ("tfrecords_builder.prostate_mpmri", "ProstateMpmriConverter"),
    "nuclei-he": ("tfrecords_builder.nuclei_he", "NucleiHeConverter"),
    "mri-reports": ("tfrecords_builder.mri_reports", "MriReportsConverter"),
    "image-folders": ("tfrecords_builder.image_folders", "ImageFoldersConverter"),
    "lung-nodules": ("tfrecords_builder.lung_nodules", "LungNodulesConverter"),
}


def get_converter(kind: str):
    try:
        module, name = CONVERTERS[kind]
    except KeyError:
        raise KeyError(f"unknown converter {kind!r}; known: {sorted(CONVERTERS)}") from None
    return getattr(importlib.import_module(module), name)()
