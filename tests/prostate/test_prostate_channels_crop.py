"""prostate-mpmri options of the thesis: ``--channels dwi`` (DWI alone on the T2's plane) and ``--native-crop``
(130 px of native T2 resized bicubically to 65), checked against NumPy / PIL / SciPy references."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import ndimage

from medtf.data.deid import IdHasher
from medtf.data.manifest import read_manifest
from medtf.io.dicom_series import read_dicom_series
from tests.conftest import TEST_SALT, run_medtf
from tests.prostate.conftest import convert, examples, read_csv
from tfrecords_builder import prostatex_layout as layout
from tfrecords_builder.prostate_patches import bicubic_resize, cubic_weights, zscore

CSV_DIR = "ProstateX-TrainingLesionInformationv2"


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
    from medtf.synth.prostate_mpmri import generate_prostate_mpmri

    root = tmp_path_factory.mktemp("prostate_small")
    generate_prostate_mpmri(root, cases=3, seed=11, fov_mm=48.0, t2_slices=8)
    return root


def _key(example):
    return example["patient_id"], int(example["finding_id"])


def _pil(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))


@pytest.mark.parametrize("n_in,n_out", [(130, 65), (40, 20), (21, 33), (17, 5)])
def test_bicubic_resize_equals_pil(n_in, n_out):
    image = np.random.default_rng(n_in).normal(size=(n_in, n_in)).astype(np.float32)
    np.testing.assert_allclose(bicubic_resize(image, n_out), _pil(image, n_out), atol=1e-4)
    assert np.allclose(cubic_weights(n_in, n_out).sum(1), 1.0)  # constants stay constant
    stacked = bicubic_resize(np.stack([image, 2 * image], -1), n_out)
    np.testing.assert_allclose(stacked[..., 1], 2 * stacked[..., 0], rtol=1e-5, atol=1e-6)


def test_dwi_channel_is_the_stacked_dwi_and_the_trilinear_reference(small_source, tmp_path):
    full, dwi = tmp_path / "full", tmp_path / "dwi"
    assert convert(small_source, full, "--no-alignment-pngs") == 0
    assert convert(small_source, dwi, "--channels", "dwi") == 0
    manifest = read_manifest(dwi)
    assert manifest["options"]["channel_set"] == "dwi" and manifest["options"]["channels"] == ["DWI highest b"]
    three = {_key(e): e for e in examples(full)}
    one = examples(dwi)
    assert len(one) == len(three) >= 3
    for e in one:
        assert e["image"].shape == (33, 33, 1)
        np.testing.assert_array_equal(e["image"][..., 0], three[_key(e)]["image"][..., 1])
    from medtf.data.parsers import parse_fn

    spec = tf.TensorSpec([None, None, None], tf.float32)  # as decoded from a shard: no static shape
    parse = tf.function(lambda x: parse_fn("prostate-mpmri", False, manifest)({"image": x})["image"])
    assert parse.get_concrete_function(spec).output_shapes.as_list() == [None, None, 1]  # from the manifest
    # The alignment PNG has one column per channel: 1 here.
    assert len(list((dwi / "alignment").glob("*.png"))) == len(one)

    # NumPy/SciPy reference: the centre pixel is the z-scored highest-b DWI, trilinear at the lesion centre
    # (1 mm patch pixels, 2 mm DWI: no smoothing).
    prox = "ProstateX-0000"
    rows = [r for r in read_csv(small_source / CSV_DIR / "ProstateX-Images-Train.csv") if r["ProxID"] == prox]
    chosen = layout.choose_series(layout.list_series(small_source / "PROSTATEx" / prox),
                                  {int(r["DCMSerNum"]) for r in rows})
    volume = read_dicom_series(chosen["dwi"][1])
    normalised, _, _ = zscore(volume)
    mine = [e for e in one if e["patient_id"].decode() == IdHasher(TEST_SALT.encode())(prox)]
    assert len(mine) == len({r["fid"] for r in rows}) >= 1
    for e in mine:
        index = volume.physical_to_index(e["lesion_position"].astype(float))
        ref = ndimage.map_coordinates(normalised.astype(np.float64), np.asarray(index[::-1])[:, None], order=1)[0]
        assert e["image"][16, 16, 0] == pytest.approx(ref, abs=1e-4)


def test_native_crop_is_the_native_t2_resized_bicubically(small_source, tmp_path):
    out = tmp_path / "native"
    # conftest's convert passes --patch-mm: the native crop refuses it (a usage error, exit 2) ...
    assert convert(small_source, tmp_path / "bad", "--native-crop", "40") == 2
    assert run_medtf("convert", "prostate-mpmri", "--input", small_source, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "0.5,0.25,0.25", "--native-crop", "40", "--patch-size", "20",
                     "--no-alignment-pngs") == 0
    options = read_manifest(out)["options"]
    assert options["native_crop_px"] == 40 and options["patch_mm"] is None and options["patch_size"] == 20
    found = examples(out)
    rows = read_csv(small_source / CSV_DIR / "ProstateX-Images-Train.csv")
    checked = 0
    for prox in sorted({r["ProxID"] for r in rows}):
        chosen = layout.choose_series(layout.list_series(small_source / "PROSTATEx" / prox),
                                      {int(r["DCMSerNum"]) for r in rows if r["ProxID"] == prox})
        t2 = read_dicom_series(chosen["t2_tra"][1])
        assert np.allclose(t2.direction_matrix, np.eye(3))  # rows of the patch = rows of the slice
        a, _, _ = zscore(t2)
        for r in rows:
            if r["ProxID"] != prox or int(r["DCMSerNum"]) != chosen["t2_tra"][0].number:
                continue
            i, j, k = (int(round(float(v))) for v in r["ijk"].split())
            if not (20 <= i <= a.shape[2] - 21 and 20 <= j <= a.shape[1] - 21):
                continue  # the reference below needs the whole crop inside the slice
            centre = t2.index_to_physical([i, j, k])
            e = [e for e in found if np.allclose(e["lesion_position"], centre, atol=1e-3)]
            assert len(e) == 1
            s = a[k].astype(np.float64)
            # 40 px centred on a voxel: pixel p sits at i + p - 19.5, halfway between two voxels on each axis.
            native = 0.25 * (s[j - 20:j + 20, i - 20:i + 20] + s[j - 19:j + 21, i - 20:i + 20]
                             + s[j - 20:j + 20, i - 19:i + 21] + s[j - 19:j + 21, i - 19:i + 21])
            np.testing.assert_allclose(e[0]["image"][..., 0], _pil(native, 20), atol=2e-4)
            np.testing.assert_allclose(e[0]["pixel_spacing"], [1.0, 1.0])  # 40 x 0.5 mm / 20 px
            checked += 1
    assert checked >= 2
