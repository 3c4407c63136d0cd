"""Issue #13 defect 3: `medtf export` records the training spacing and orientation in medtf.json and `medtf predict`
reorients + resamples the input to them, then maps the prediction back onto the input grid.

The model is deterministic, exported through the real `medtf export` path with the evaluation fixtures' brachy-ct
shards (train: 2 x 2 x 4 mm, LPS): a 3D convolution with one tap, ``p(i) = sigmoid(SLOPE * (window(x[i + o]) - t))``
with ``o`` = 2 voxels along the array's first axis (z) and 3 along its last (x), i.e. "the voxel 8 mm superior and
6 mm left of here (on the training grid) is above 400 HU". Unlike a pointwise threshold its mask depends on the
grid it runs on: in voxels of another spacing the offset is another distance in mm, and on a flipped or permuted
array it points elsewhere. The same synthetic scan is given as an LPS DICOM series at 1 x 1 x 2 mm, as a RAS NIfTI
written with nibabel (axes permuted and flipped) and resampled to 1.6 x 1.25 x 3 mm; every mask must have exactly
its input's shape and affine (nibabel) and agree with the others and with the expected shifted object.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_medtf
from tests.evaluation.conftest import BRACHY_HU, BRACHY_WINDOW, SLOPE, decoded, make_run

OFFSET_VOXELS = (2, 0, 3)              # tap offset along the array axes (z, y, x) of the model's grid
TRAIN_SPACING = (2.0, 2.0, 4.0)        # (x, y, z), as the fixtures convert with --spacing 2,2,4
SHIFT_MM = np.array([3 * 2.0, 0.0, 2 * 4.0])  # LPS (x, y, z): the mask is the object moved by -SHIFT_MM
BOX_MM = ((21.0, 61.0), (25.0, 65.0), (27.0, 75.0))  # bright box, physical LPS x, y, z ranges
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def offset_model():
    import keras

    inputs = keras.Input((None, None, None, 1))
    conv = keras.layers.Conv3D(1, (5, 1, 7), padding="same", activation="sigmoid", name="offset")
    model = keras.Model(inputs, conv(inputs))
    kernel = np.zeros((5, 1, 7, 1, 1), np.float32)
    kernel[2 + OFFSET_VOXELS[0], 0, 3 + OFFSET_VOXELS[2], 0, 0] = SLOPE
    t = (BRACHY_HU - (BRACHY_WINDOW["center"] - BRACHY_WINDOW["width"] / 2)) / BRACHY_WINDOW["width"]
    conv.set_weights([kernel, np.array([-SLOPE * t], np.float32)])
    return model


@pytest.fixture(scope="module")
def exported(eval_root, brachy_data, tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("geometry") / "run", brachy_data, offset_model(),
                   {"kind": "brachy-ct", "preprocess": [BRACHY_WINDOW], "patch_size": None})
    out = tmp_path_factory.mktemp("geometry_export")
    assert run_medtf("export", run, "--output", out, "--name", "offset") == 0
    return out / "offset" / "1"


def inside_box(points, shift=np.zeros(3)):
    p = points + shift
    return np.all([(p[..., a] >= lo) & (p[..., a] <= hi) for a, (lo, hi) in enumerate(BOX_MM)], axis=0)


def scan():
    """The scan in LPS at 1 x 1 x 2 mm: soft tissue -50..50 HU, a 1000 HU box; identity direction."""
    from medtf.io.volume import Volume

    grid = Volume(np.zeros((48, 88, 80), np.int16), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0), modality="CT")
    rng = np.random.default_rng(7)
    array = rng.integers(-50, 50, size=grid.array.shape).astype(np.int16)
    array[inside_box(grid.voxel_centers())] = 1000
    return grid.with_array(array)


def write_ras_nifti(volume, path):
    """``volume`` (LPS, identity direction) as a NIfTI whose axes are (x reversed -> R, z -> S, y reversed -> A)."""
    import nibabel as nib

    nx, ny, _ = volume.shape_xyz
    sx, sy, sz = volume.spacing
    data = np.transpose(volume.array[:, ::-1, ::-1], (2, 0, 1))       # [i, j, k] = A[z=j, y=ny-1-k, x=nx-1-i]
    first = np.asarray(volume.origin) + np.array([sx * (nx - 1), sy * (ny - 1), 0.0])  # LPS of voxel [0, 0, 0]
    affine = np.zeros((4, 4))
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = (sx, 0, 0), (0, 0, sz), (0, sy, 0)
    affine[:3, 3] = (-first[0], -first[1], first[2])
    affine[3, 3] = 1.0
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def resampled(volume, spacing):
    from tfrecords_builder.brachy_ct import resample

    out = resample(volume, spacing, default_value=-50.0)
    return out.with_array(np.rint(out.array).astype(np.int16))


@pytest.fixture(scope="module")
def predictions(exported, tmp_path_factory):
    """{name: (input path, output folder)} for the DICOM, RAS NIfTI and resampled NIfTI inputs."""
    from medtf.export.writers import write_nifti
    from medtf.synth.dicom_writer import write_dicom_series

    root = tmp_path_factory.mktemp("geometry_inputs")
    volume = scan()
    write_dicom_series(volume, root / "dicom", modality="CT", patient_name="GEO^TEST", patient_id="GEO1")
    inputs = {"dicom": root / "dicom", "ras": write_ras_nifti(volume, root / "ras.nii.gz"),
              "resampled": write_nifti(resampled(volume, (1.6, 1.25, 3.0)), root / "resampled.nii.gz")}
    results = {}
    for name, path in inputs.items():
        assert run_medtf("predict", exported, "--input", path, "--output", root / f"out-{name}", "--overlays",
                         "0") == 0
        results[name] = (path, root / f"out-{name}")
    return results


def test_medtf_json_records_training_geometry(exported, brachy_data):
    from medtf.export.geometry import orientation_code

    meta = json.loads((exported / "medtf.json").read_text())
    fp = meta["fingerprint"]
    assert fp["spacing"]["median"] == list(TRAIN_SPACING)
    train = decoded(brachy_data, "train")
    assert fp["orientation"] == orientation_code(train[0]["direction"]) == "LPS"
    assert meta["preprocess"] == [BRACHY_WINDOW] and meta["image_scale_divisor"] == 1.0


def test_masks_have_their_inputs_grid(predictions):
    import nibabel as nib

    for name, (source, out) in predictions.items():
        mask = nib.load(str(out / "mask.nii.gz"))
        if name == "dicom":
            volume = scan()
            shape, affine = volume.shape_xyz, LPS_TO_RAS @ volume.affine_lps
        else:
            image = nib.load(str(source))
            shape, affine = image.shape, image.affine
        assert mask.shape == tuple(shape), name
        np.testing.assert_allclose(mask.affine, affine, atol=1e-4, err_msg=name)
        summary = json.loads((out / "prediction.json").read_text())
        assert summary["model_grid"]["spacing"] == pytest.approx(TRAIN_SPACING) and summary["model_grid"]["resampled"]


def _mask_on(reference, path):
    """A mask file resampled (nearest) onto ``reference``'s grid (a `Volume`), as an array."""
    import SimpleITK as sitk

    mask = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(sitk.Resample(mask, reference.to_sitk(), sitk.Transform(),
                                                sitk.sitkNearestNeighbor, 0, mask.GetPixelID()))


def dice(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def test_same_mask_for_every_geometry(predictions):
    volume = scan()
    expected = inside_box(volume.voxel_centers(), SHIFT_MM)     # object moved 6 mm right, 8 mm inferior
    masks = {name: _mask_on(volume, out / "mask.nii.gz") for name, (_, out) in predictions.items()}
    assert masks["dicom"].sum() > 0.5 * expected.sum() > 1000
    for name, mask in masks.items():
        assert dice(mask, expected) >= 0.95, (name, dice(mask, expected))
        assert dice(mask, masks["dicom"]) >= 0.95, (name, dice(mask, masks["dicom"]))
    # The RAS NIfTI is the same voxels permuted/flipped: reorientation is exact and so is its mask.
    np.testing.assert_array_equal(masks["ras"], masks["dicom"])
