"""`medtf predict`: masks on the native grid, DICOM SEG referencing the source series, NIfTI and PNG inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import find_phi, run_medtf
from tests.export.conftest import PATIENT_ID, PATIENT_NAME, WINDOW, make_run


def _sitk(path):
    import SimpleITK as sitk

    return sitk.ReadImage(str(path))


def _expected_pointwise_mask(hu: np.ndarray) -> np.ndarray:
    """The pointwise model's mask in closed form: windowed image > 0.5 <=> HU > 650 (window [-200, 1500])."""
    return (hu.astype(np.float64) > 650).astype(np.uint8)


@pytest.fixture(scope="module")
def dicom_prediction(pointwise3d_model_dir, ct_series, tmp_path_factory):
    folder, _ = ct_series
    out = tmp_path_factory.mktemp("pred_dicom") / "out"
    code = run_medtf("predict", pointwise3d_model_dir, "--input", folder, "--output", out, "--probabilities",
                     "--overlays", "3")
    assert code == 0
    return out


def test_mask_on_native_grid(dicom_prediction, ct_series):
    import SimpleITK as sitk

    folder, volume = ct_series
    mask_img = _sitk(dicom_prediction / "mask.nii.gz")
    np.testing.assert_allclose(mask_img.GetSpacing(), volume.spacing, atol=1e-5)
    np.testing.assert_allclose(mask_img.GetOrigin(), volume.origin, atol=1e-4)
    np.testing.assert_allclose(mask_img.GetDirection(), volume.direction, atol=1e-5)
    mask = sitk.GetArrayFromImage(mask_img)
    assert mask.dtype == np.uint8
    expected = _expected_pointwise_mask(volume.array)
    assert expected.sum() == 16 * 3 * 3 + 4 * 5 * 6
    np.testing.assert_array_equal(mask, expected)
    probs = sitk.GetArrayFromImage(_sitk(dicom_prediction / "probabilities.nii.gz"))
    assert probs.shape == volume.array.shape and probs.dtype == np.float32
    np.testing.assert_array_equal(probs >= 0.5, expected.astype(bool))


def test_summary_json(dicom_prediction, ct_series):
    _, volume = ct_series
    summary = json.loads((dicom_prediction / "prediction.json").read_text())
    voxels = int(_expected_pointwise_mask(volume.array).sum())
    assert summary["voxels"] == voxels
    assert summary["volume_ml"] == pytest.approx(voxels * 0.8 * 0.9 * 2.5 / 1000.0, rel=1e-9)
    assert summary["outputs"]["mask"] == "mask.nii.gz" and summary["outputs"]["seg"] == "seg.dcm"
    assert summary["outputs"]["probabilities"] == "probabilities.nii.gz"
    assert summary["input"]["format"] == "dicom" and summary["input"]["shape"] == list(volume.array.shape)
    assert summary["patch_size"] == [8, 16, 16] and summary["threshold"] == 0.5 and summary["warnings"] == []
    # exported without training data (the fixture's data.dir is empty): no fingerprint to compare with
    assert [n[:33] for n in summary["notes"]] == ["no out-of-distribution check: the"]
    # nothing but the SEG (which must copy the patient module) holds patient identifiers
    hits = [h for h in find_phi(dicom_prediction, [PATIENT_NAME, PATIENT_ID, "EXPORTTEST"])
            if not h.startswith("seg.dcm")]
    assert hits == []


def test_dicom_seg_references_series_and_matches_mask(dicom_prediction, ct_series):
    import highdicom as hd
    import pydicom
    import SimpleITK as sitk

    from medtf.io import read_dicom_series

    folder, _ = ct_series
    source = read_dicom_series(folder)
    uids = source.metadata["SOPInstanceUIDs"]
    mask = sitk.GetArrayFromImage(_sitk(dicom_prediction / "mask.nii.gz"))

    ds = pydicom.dcmread(dicom_prediction / "seg.dcm")
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.FrameOfReferenceUID == source.metadata["FrameOfReferenceUID"]
    assert ds.StudyInstanceUID == source.metadata["StudyInstanceUID"]
    assert str(ds.PatientID) == PATIENT_ID  # copied so viewers attach the SEG to the study
    ref_series = ds.ReferencedSeriesSequence[0]
    assert ref_series.SeriesInstanceUID == source.metadata["SeriesInstanceUID"]
    assert sorted(i.ReferencedSOPInstanceUID for i in ref_series.ReferencedInstanceSequence) == sorted(uids)
    segment = ds.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "19923001"  # Catheter
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "260787004"  # Physical object

    # Rebuild the volume from the frames through each frame's source reference (frame order need not be z order).
    frames = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    rebuilt = np.zeros_like(mask)
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        rebuilt[uids.index(ref)] = frame
    np.testing.assert_array_equal(rebuilt, mask)
    assert len(frames) == int(mask.reshape(len(mask), -1).any(axis=1).sum())  # empty slices omitted

    seg = hd.seg.segread(dicom_prediction / "seg.dcm")
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(pixels[..., 0], mask)


def test_overlays(dicom_prediction, ct_series):
    from PIL import Image

    _, volume = ct_series
    summary = json.loads((dicom_prediction / "prediction.json").read_text())
    names = summary["outputs"]["overlays"]
    assert len(names) == 3 and all(n.startswith("overlay_z") for n in names)
    z_with_mask = set(np.flatnonzero(_expected_pointwise_mask(volume.array).any(axis=(1, 2))))
    for name in names:
        assert int(name[len("overlay_z"):-4]) in z_with_mask
        with Image.open(dicom_prediction / name) as img:
            assert img.size == (volume.array.shape[2], volume.array.shape[1]) and img.mode == "RGB"
            rgb = np.asarray(img)
        assert (np.all(rgb == [255, 255, 0], axis=-1)).sum() > 0  # contour drawn


def test_nifti_input_unet_matches_keras_sliding_window(ct_series, tmp_path):
    """A real (untrained) U-Net: probabilities equal Keras sliding-window inference on training-preprocessed input."""
    import SimpleITK as sitk
    import tensorflow as tf

    from medtf.export import export_run
    from medtf.inferers import sliding_window_inference
    from medtf.models import get_model
    from medtf.transforms import build_transforms

    _, volume = ct_series
    nifti = tmp_path / "ct.nii.gz"
    sitk.WriteImage(volume.to_sitk(), str(nifti))
    model = get_model("unet3d_small", in_channels=1, num_classes=1)
    preprocess = WINDOW + [{"name": "zscore"}]
    # patch deeper than the volume (20 slices): the z axis is padded for inference and cropped back
    run = make_run(tmp_path / "run", model, "brachy-ct", name="unet3d_small", preprocess=preprocess,
                   patch_size=[24, 16, 16])
    model_dir = export_run(run).parent
    out = tmp_path / "out"
    assert run_medtf("predict", model_dir, "--input", nifti, "--output", out, "--probabilities",
                     "--overlap", "0.25", "--threshold", "0.45") == 0

    x = build_transforms(preprocess)({"image": tf.constant(volume.array[..., None], tf.float32)}, [0, 0])["image"]
    expected = np.asarray(sliding_window_inference(x[None], model, (24, 16, 16), overlap=0.25,
                                                   output_device="cpu"))[0, ..., 0]
    probs = sitk.GetArrayFromImage(_sitk(out / "probabilities.nii.gz"))
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    mask = sitk.GetArrayFromImage(_sitk(out / "mask.nii.gz"))
    clear = np.abs(expected - 0.45) > 1e-4
    np.testing.assert_array_equal(mask[clear], (expected[clear] >= 0.45).astype(np.uint8))
    summary = json.loads((out / "prediction.json").read_text())
    assert summary["input"]["format"] == "nifti" and "seg" not in summary["outputs"]
    assert summary["notes"][1:] == ["no DICOM SEG: the input is nifti, not a DICOM series"]
    assert summary["voxels"] == int(mask.sum()) and summary["threshold"] == 0.45
    assert mask.shape == volume.array.shape and summary["patch_size"] == [24, 16, 16]
    assert not (out / "seg.dcm").exists()
    ref = _sitk(nifti)
    mask_img = _sitk(out / "mask.nii.gz")
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        np.testing.assert_allclose(getattr(mask_img, get)(), getattr(ref, get)(), atol=1e-5)


def test_png_input_2d_model(pointwise2d_model_dir, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 100, size=(40, 52, 3)).astype(np.uint8)
    rgb[10:20, 30:45] = 220  # "tumour": mean/255 > 0.5
    Image.fromarray(rgb).save(tmp_path / "slice.png")
    out = tmp_path / "out"
    assert run_medtf("predict", pointwise2d_model_dir, "--input", tmp_path / "slice.png", "--output", out) == 0
    import SimpleITK as sitk

    mask = sitk.GetArrayFromImage(_sitk(out / "mask.nii.gz"))
    expected = (rgb.astype(np.float64).mean(axis=-1) / 255.0 > 0.5).astype(np.uint8)
    assert expected.sum() == 150
    np.testing.assert_array_equal(mask, expected)
    summary = json.loads((out / "prediction.json").read_text())
    assert summary["area_mm2"] == pytest.approx(150.0) and summary["outputs"]["overlays"] == ["overlay.png"]
    assert summary["patch_size"] == [40, 52]  # whole image (no patch in the run)
    with Image.open(out / "overlay.png") as img:
        assert img.size == (52, 40)
    assert not (out / "seg.dcm").exists()


def test_errors_are_clear(pointwise3d_model_dir, pointwise2d_model_dir, ct_series, tmp_path, capsys):
    folder, _ = ct_series
    out = tmp_path / "out"
    assert run_medtf("predict", pointwise3d_model_dir, "--input", tmp_path / "nope.nii.gz", "--output", out) == 2
    assert "input does not exist" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("hello")
    assert run_medtf("predict", pointwise3d_model_dir, "--input", tmp_path / "notes.txt", "--output", out) == 2
    assert "unsupported input" in capsys.readouterr().err
    assert run_medtf("predict", pointwise2d_model_dir, "--input", folder, "--output", out) == 2
    err = capsys.readouterr().err
    assert "expects 2D images" in err and PATIENT_ID not in err and PATIENT_NAME not in err
    assert run_medtf("predict", tmp_path, "--input", folder, "--output", out) == 2
    assert "not an exported model" in capsys.readouterr().err
    assert not out.exists()


def test_console_output_has_no_phi(pointwise3d_model_dir, ct_series, tmp_path, capsys):
    folder, _ = ct_series
    assert run_medtf("predict", pointwise3d_model_dir, "--input", folder, "--output", tmp_path / "o",
                     "--overlays", "0") == 0
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "predicted 264 foreground voxels" in text
    assert PATIENT_ID not in text and PATIENT_NAME not in text
    assert not list((tmp_path / "o").glob("overlay*"))


def test_predict_prints_progress_per_patch_batch(pointwise3d_model_dir, ct_series, tmp_path, capsys):
    import math
    import re

    from medtf.inferers.sliding_window import patch_starts

    folder, volume = ct_series
    patches = math.prod(len(patch_starts(s, p, 0.5)) for s, p in zip(volume.array.shape, (8, 16, 16)))
    batches = math.ceil(patches / 3)
    assert run_medtf("predict", pointwise3d_model_dir, "--input", folder, "--output", tmp_path / "a",
                     "--batch-size", "3", "--overlays", "0") == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("predict: ")]
    every = math.ceil(batches / 10)  # not a terminal: a line every ~10% of the batches, and the last one
    expected = list(range(every, batches + 1, every))
    expected += [] if expected[-1] == batches else [batches]
    assert [int(re.match(rf"predict: (\d+)/{batches} patch batches", ln).group(1)) for ln in lines] == expected
    assert run_medtf("predict", pointwise3d_model_dir, "--input", folder, "--output", tmp_path / "b",
                     "--overlays", "0", "--quiet") == 0
    assert "predict: " not in capsys.readouterr().err
