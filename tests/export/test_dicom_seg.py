"""`medtf.export.dicom_seg` and the small helpers of prediction, without a model."""

from __future__ import annotations

import numpy as np
import pytest


def _sources(ct_series):
    from medtf.export.predict import read_input

    source = read_input(ct_series[0])
    assert source.format == "dicom" and len(source.source_files) == source.volume.array.shape[0]
    return source


def test_empty_prediction_still_gives_a_valid_seg(ct_series, tmp_path):
    import highdicom as hd

    from medtf.export.dicom_seg import write_dicom_seg

    source = _sources(ct_series)
    mask = np.zeros(source.volume.array.shape, np.uint8)
    path = write_dicom_seg(mask, source.source_files, "brachy-ct", tmp_path / "seg.dcm", algorithm="m")
    seg = hd.seg.segread(path)
    assert seg.number_of_frames == mask.shape[0]
    pixels = seg.get_pixels_by_source_instance(source.volume.metadata["SOPInstanceUIDs"], segment_numbers=[1])
    assert pixels.shape == mask.shape + (1,) and pixels.max() == 0


def test_label_map_gives_one_segment_per_class(ct_series, tmp_path):
    import highdicom as hd

    from medtf.export.dicom_seg import write_dicom_seg

    source = _sources(ct_series)
    mask = np.zeros(source.volume.array.shape, np.uint8)
    mask[3, 5:9, 6:10] = 1
    mask[10, 20:22, 30:33] = 2
    path = write_dicom_seg(mask, source.source_files, "lgg-mri", tmp_path / "seg.dcm", num_segments=2)
    seg = hd.seg.segread(path)
    assert list(seg.segment_numbers) == [1, 2]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # Neoplasm
    uids = source.volume.metadata["SOPInstanceUIDs"]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2], assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(pixels[..., 0], mask == 1)
    np.testing.assert_array_equal(pixels[..., 1], mask == 2)


def test_seg_rejects_mismatched_mask(ct_series, tmp_path):
    from medtf.export.dicom_seg import write_dicom_seg

    source = _sources(ct_series)
    with pytest.raises(ValueError, match="does not match"):
        write_dicom_seg(np.zeros((2, 4, 4), np.uint8), source.source_files, "brachy-ct", tmp_path / "s.dcm")


def test_to_mask_threshold_and_argmax():
    from medtf.export.predict import to_mask

    probs = np.array([[0.2], [0.5], [0.9]], np.float32)
    assert to_mask(probs, 0.5).tolist() == [0, 1, 1]
    multi = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]], np.float32)
    assert to_mask(multi, 0.5).tolist() == [0, 2, 1]


def test_overlay_helpers():
    from medtf.export.writers import contour, overlay, overlay_slices

    mask = np.zeros((5, 6), bool)
    mask[1:4, 1:5] = True
    edge = contour(mask)
    assert edge.sum() == 10 and not edge[2, 2] and not edge[2, 3]  # 3x4 block: 12 - 2 interior pixels
    rgb = overlay(np.full((5, 6), 100, np.int16), mask)
    assert rgb.shape == (5, 6, 3) and rgb.dtype == np.uint8
    assert rgb[2, 2].tolist() != rgb[0, 0].tolist() and rgb[1, 1].tolist() == [255, 255, 0]
    vol = np.zeros((10, 2, 2), bool)
    vol[4:8] = True
    assert overlay_slices(vol, 2) == [5, 6] and overlay_slices(vol, 9) == [4, 5, 6, 7]
    assert overlay_slices(np.zeros((10, 2, 2), bool), 1) == [4]


def test_writing_a_seg_logs_no_source_uids(ct_series, tmp_path, caplog):
    import logging

    from medtf.export.dicom_seg import write_dicom_seg

    source = _sources(ct_series)
    mask = np.zeros(source.volume.array.shape, np.uint8)
    mask[2, 4:8, 4:8] = 1
    with caplog.at_level(logging.INFO):  # the level the `medtf convert/demo` console runs at
        write_dicom_seg(mask, source.source_files, "brachy-ct", tmp_path / "seg.dcm", algorithm="m")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert not [uid for uid in source.volume.metadata["SOPInstanceUIDs"] if uid in text]


@pytest.mark.parametrize("filled", [False, True], ids=["empty", "two-classes"])
def test_seg_is_valid_dicom(ct_series, tmp_path, dciodvfy, filled):
    from medtf.export.dicom_seg import write_dicom_seg

    source = _sources(ct_series)
    mask = np.zeros(source.volume.array.shape, np.uint8)
    if filled:
        mask[3, 5:9, 6:10], mask[10, 20:22, 30:33] = 1, 2
    path = write_dicom_seg(mask, source.source_files, "brachy-ct", tmp_path / "seg.dcm", num_segments=1 + filled)
    report = dciodvfy(path)
    assert (report.errors, report.warnings) == ([], []), report.output
