"""DICOM Segmentation (SEG) of a predicted mask, referencing the CT/MR series it was predicted on (highdicom).

One BINARY segment per foreground class, one frame per source slice that holds mask voxels; the SEG references
every source instance (ReferencedSeriesSequence / SourceImageSequence per frame) and shares the source's
FrameOfReferenceUID, so viewers (OHIF, 3D Slicer, PACS) attach it to the series. highdicom copies the patient and
study modules from the source images, which that attachment needs: the SEG file therefore holds patient data, like
every DICOM object of the study. Nothing here prints or logs them.

Segment codes (SNOMED CT, DICOM CID 7150/7151 style):

=========== ================================================= ===========================================
kind        SegmentedPropertyCategory                         SegmentedPropertyType
=========== ================================================= ===========================================
brachy-ct   260787004 Physical object                         19923001 Catheter (brachytherapy catheters)
lgg-mri     49755003 Morphologically abnormal structure       108369006 Neoplasm (lower-grade glioma)
other       49755003 Morphologically abnormal structure       52988006 Lesion
=========== ================================================= ===========================================

Example:
    >>> write_dicom_seg(mask, ct_files_in_z_order, "brachy-ct", out / "seg.dcm", algorithm="unet3d")
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

SEG_SERIES_NUMBER = 9001  # high, so the SEG sorts after the acquired series in viewers

# highdicom logs every copied module at INFO with the source dataset's SOP Instance UID: UIDs identify a patient's
# images, so they stay out of medtf's console output and logs (warnings still show).
logging.getLogger("highdicom").setLevel(logging.WARNING)


def segment_codes(kind: str):
    """``(label, category Code, type Code)`` of the foreground for ``kind``."""
    from pydicom.sr.coding import Code

    abnormal = Code("49755003", "SCT", "Morphologically abnormal structure")
    table = {
        "brachy-ct": ("Catheter", Code("260787004", "SCT", "Physical object"), Code("19923001", "SCT", "Catheter")),
        "lgg-mri": ("Tumour", abnormal, Code("108369006", "SCT", "Neoplasm")),
    }
    return table.get(kind, ("Lesion", abnormal, Code("52988006", "SCT", "Lesion")))


def _descriptions(kind: str, num_segments: int, algorithm: str, version: str):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    label, category, prop_type = segment_codes(kind)
    algo = hd.AlgorithmIdentificationSequence(name=algorithm[:64], family=codes.cid7162.ArtificialIntelligence,
                                              version=version[:64])
    return [
        hd.seg.SegmentDescription(
            segment_number=k, segment_label=label if num_segments == 1 else f"{label} {k}",
            segmented_property_category=category, segmented_property_type=prop_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
        )
        for k in range(1, num_segments + 1)
    ]


def write_dicom_seg(mask: np.ndarray, source_files: Sequence[str | os.PathLike], kind: str,
                    path: str | os.PathLike, *, algorithm: str = "medtf", num_segments: int = 1) -> Path:
    """Write a BINARY DICOM SEG of ``mask`` on the grid of the single-frame source slices ``source_files``.

    Args:
        mask: ``(z, y, x)`` integer label map (0 background, 1..num_segments), ``mask[i]`` on ``source_files[i]``
            pixel for pixel (the z order of `medtf.io.read_dicom_series`, i.e. ``metadata["SOPInstanceUIDs"]``).
        source_files: the source series' files in the same z order (headers are read, pixels are not).
        kind: data kind, picks the segment codes (`segment_codes`).
        path: output file.
        algorithm: algorithm name stored in the AlgorithmIdentificationSequence (e.g. the model name).
        num_segments: number of foreground classes described (label values 1..num_segments).

    Returns:
        ``path``.

    Raises:
        ValueError: mask shape does not match the number/size of source slices.
    """
    import highdicom as hd
    import pydicom

    from medtf import __version__

    sources = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in source_files]
    mask = np.asarray(mask)
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if mask.ndim != 3 or mask.shape != (len(sources), rows, cols):
        raise ValueError(f"mask shape {mask.shape} does not match {len(sources)} source slices of {rows}x{cols}")
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(kind, num_segments, algorithm, __version__),
        series_instance_uid=hd.UID(),
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medtf",
        manufacturer_model_name=algorithm[:64],
        software_versions=f"medtf {__version__}",
        device_serial_number="0",
        series_description=f"medtf {algorithm}"[:64],
        content_label="MEDTF",
        content_description=f"{kind} segmentation"[:64],
        # An all-empty prediction still needs a frame; otherwise only frames with mask voxels are stored.
        omit_empty_frames=bool(mask.any()),
    )
    path = Path(path)
    seg.save_as(str(path))
    return path
