"""read_image (SimpleITK formats) and read_slice_2d (TIFF/PNG): geometry round trips and clear errors."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from medtf.io import InputError, parse_nonfinite, read_image, read_slice_2d
from medtf.io.volume import Volume

SUFFIXES = [".nii.gz", ".mha", ".mhd", ".nrrd"]


@pytest.fixture
def source_image(oblique_ct) -> sitk.Image:
    return oblique_ct.to_sitk()


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_read_image_round_trip(tmp_path, source_image, oblique_ct, suffix, assert_matches_sitk):
    path = tmp_path / f"img{suffix}"
    sitk.WriteImage(source_image, str(path))
    if suffix == ".mhd":
        assert (tmp_path / "img.raw").exists() or (tmp_path / "img.zraw").exists()
    vol = read_image(path)
    assert_matches_sitk(vol, sitk.ReadImage(str(path)), atol=0)  # exactly what SimpleITK reads
    np.testing.assert_array_equal(vol.array, oblique_ct.array)
    assert vol.array.dtype == np.int16 and not vol.is_vector
    np.testing.assert_allclose(vol.direction, oblique_ct.direction, atol=1e-5)  # non-identity survives the file
    np.testing.assert_allclose(vol.origin, oblique_ct.origin, atol=1e-4)
    np.testing.assert_allclose(vol.spacing, oblique_ct.spacing, atol=1e-5)


def test_nifti_affine_is_ras_of_volume_lps(tmp_path, source_image):
    path = tmp_path / "img.nii.gz"
    sitk.WriteImage(source_image, str(path))
    vol = read_image(path)
    assert vol.metadata["format"] == "nifti"
    affine_ras = nib.load(str(path)).affine
    np.testing.assert_allclose(affine_ras, np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine_lps, atol=1e-4)
    assert not np.allclose(vol.direction_matrix, np.eye(3), atol=0.1)


def test_read_image_2d_and_vector(tmp_path):
    rgb = Volume(np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3), spacing=(0.5, 0.25), origin=(1, 2),
                 is_vector=True)
    sitk.WriteImage(rgb.to_sitk(), str(tmp_path / "rgb.mha"))
    vol = read_image(tmp_path / "rgb.mha")
    assert vol.is_vector and vol.ndim == 2 and vol.spacing == (0.5, 0.25) and vol.origin == (1.0, 2.0)
    np.testing.assert_array_equal(vol.array, rgb.array)


def test_read_image_errors(tmp_path, source_image):
    with pytest.raises(InputError, match="file does not exist") as err:
        read_image(tmp_path / "missing.nii.gz")
    assert err.value.path == str(tmp_path / "missing.nii.gz")
    (tmp_path / "scan.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(InputError, match="unsupported file extension"):
        read_image(tmp_path / "scan.jpg")
    (tmp_path / "corrupt.nii.gz").write_bytes(b"not gzip at all" * 10)
    with pytest.raises(InputError, match="cannot read this nifti file") as err:
        read_image(tmp_path / "corrupt.nii.gz")
    assert err.value.path.endswith("corrupt.nii.gz")
    sitk.WriteImage(source_image, str(tmp_path / "lonely.mhd"))
    (tmp_path / "lonely.raw").unlink()
    with pytest.raises(InputError, match="metaimage") as err:
        read_image(tmp_path / "lonely.mhd")
    assert err.value.path.endswith("lonely.mhd")
    with pytest.raises(InputError, match="not a file"):
        read_image(tmp_path)


def test_rgb_tiff_with_and_without_resolution(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, size=(12, 17, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tile.tif", rgb, photometric="rgb", resolution=(40.0, 20.0),
                     resolutionunit="CENTIMETER")
    vol = read_slice_2d(tmp_path / "tile.tif")
    assert vol.is_vector and vol.array.shape == (12, 17, 3) and vol.shape_xyz == (17, 12)
    np.testing.assert_array_equal(vol.array, rgb)
    assert vol.spacing == pytest.approx((0.25, 0.5))  # 40 px/cm in x, 20 px/cm in y
    tifffile.imwrite(tmp_path / "plain.tiff", rgb, photometric="rgb")
    plain = read_slice_2d(tmp_path / "plain.tiff")
    assert plain.spacing == (1.0, 1.0) and plain.origin == (0.0, 0.0)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_slice_2d(tmp_path / "planar.tif").array, rgb)


@pytest.mark.parametrize("mode, dtype", [("L", np.uint8), ("I;16", np.uint16)])
def test_grayscale_png(tmp_path, mode, dtype):
    gray = np.random.default_rng(1).integers(0, 200 if dtype == np.uint8 else 60000, size=(9, 14)).astype(dtype)
    Image.fromarray(gray).save(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as img:
        assert img.mode == mode
    vol = read_slice_2d(tmp_path / "g.png")
    assert not vol.is_vector and vol.array.shape == (9, 14) and vol.spacing == (1.0, 1.0)
    assert vol.direction == (1.0, 0.0, 0.0, 1.0)
    np.testing.assert_array_equal(vol.array, gray)


def test_png_dpi_rgba_and_errors(tmp_path):
    rgba = np.random.default_rng(2).integers(0, 256, size=(6, 7, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png", dpi=(254, 127))
    vol = read_slice_2d(tmp_path / "a.png")
    assert vol.is_vector and vol.array.shape == (6, 7, 3)
    np.testing.assert_array_equal(vol.array, rgba[..., :3])
    assert vol.spacing == pytest.approx((0.1, 0.2), rel=1e-3)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="cannot read PNG file") as err:
        read_slice_2d(tmp_path / "bad.png")
    assert err.value.path.endswith("bad.png")
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(InputError, match="unsupported file extension"):
        read_slice_2d(tmp_path / "x.bmp")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 4, 5), np.uint8), photometric="minisblack")
    with pytest.raises(InputError, match="single 2D grayscale or RGB image"):
        read_slice_2d(tmp_path / "stack.tif")


# --- non-finite voxels ------------------------------------------------------------------------------------------
NONFINITE_ZYX = {(1, 2, 3): np.nan, (3, 0, 5): np.nan, (2, 4, 1): np.inf, (0, 1, 1): -np.inf}


def _write_float_image(path, suffix):
    """A float32 (4, 5, 6) volume with 2 NaN, 1 +Inf and 1 -Inf voxels; NIfTI written by nibabel (not ITK)."""
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6) + 10.0
    for zyx, value in NONFINITE_ZYX.items():
        array[zyx] = value
    if suffix == ".nii.gz":
        nib.save(nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), np.diag([0.8, 0.9, 2.0, 1.0])),
                 str(path))
    else:
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return array


@pytest.mark.parametrize("suffix", [".nii.gz", ".mhd", ".nrrd"])
def test_nonfinite_voxels_are_rejected_with_their_count_or_filled_on_request(tmp_path, suffix):
    path = tmp_path / f"flair{suffix}"
    array = _write_float_image(path, suffix)
    with pytest.raises(InputError) as err:
        read_image(path)
    assert err.value.path == str(path)
    assert "4 non-finite voxels (2 NaN, 1 +Inf, 1 -Inf) of 120" in err.value.reason
    vol = read_image(path, fill_nonfinite=-7.5)
    assert vol.metadata["nonfinite_filled"] == 4 and vol.array.dtype == np.float32
    expected = array.copy()
    for zyx in NONFINITE_ZYX:
        expected[zyx] = -7.5
    np.testing.assert_array_equal(vol.array, expected)
    finite = array.copy()
    finite[~np.isfinite(finite)] = 1.0
    sitk.WriteImage(sitk.GetImageFromArray(finite), str(tmp_path / "clean.nrrd"))
    assert read_image(tmp_path / "clean.nrrd", fill_nonfinite=0.0).metadata["nonfinite_filled"] == 0


def test_nonfinite_policy_parsing():
    assert parse_nonfinite("error") is None and parse_nonfinite("fill:0") == 0.0
    assert parse_nonfinite("fill:-1024.5") == -1024.5
    for bad in ("fill", "fill:nan", "fill:abc", "zero"):
        with pytest.raises(ValueError, match="--nonfinite expects 'error' or 'fill:VALUE'"):
            parse_nonfinite(bad)
