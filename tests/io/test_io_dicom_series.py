"""read_dicom_series / scan_dicom_folder against SimpleITK (GDCM) as the geometry reference, and on broken input."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file

import medtf.io.dicom_headers as dicom_headers
from medtf.io import InputError, SeriesGeometryError, read_dicom_series, scan_dicom_folder
from medtf.synth.dicom_writer import write_dicom_series, write_multiframe

PHI = ("SYNTH^PATIENT", "SYN0001", "19700101")


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


# --- geometry against SimpleITK ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, dtype", [("CT_small.dcm", np.int16), ("MR_small.dcm", np.int16)])
def test_pydicom_sample_files_match_simpleitk(name, dtype, assert_matches_sitk):
    path = get_testdata_file(name)
    vol = read_dicom_series(path)
    ref = sitk.ReadImage(path)
    assert vol.array.dtype == dtype and vol.array.shape == (1, *pydicom.dcmread(path).pixel_array.shape)
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(vol.spacing[:2], ref.GetSpacing()[:2], atol=1e-6)
    np.testing.assert_allclose(vol.origin, ref.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(vol.direction, ref.GetDirection(), atol=1e-6)
    if name == "CT_small.dcm":  # rescale -1024 applied: HU, like GDCM
        assert_matches_sitk(vol, ref)
        assert vol.array.min() == -896 and vol.metadata["Modality"] == "CT"
    else:  # no SpacingBetweenSlices: we use SliceThickness (0.8), GDCM falls back to 1.0
        assert vol.spacing[2] == pytest.approx(0.8) and ref.GetSpacing()[2] == 1.0


def test_oblique_shuffled_series_matches_simpleitk_and_source(tmp_path, oblique_ct, sitk_series, assert_matches_sitk):
    rng = np.random.default_rng(5)
    names = rng.permutation(16)  # file-name order unrelated to z
    instance_numbers = [int(i) for i in rng.permutation(16) + 1]  # and InstanceNumber too
    write_dicom_series(oblique_ct, tmp_path, file_names=lambda k, ds: f"img{names[k]:02d}.dcm",
                       instance_numbers=instance_numbers)
    vol = read_dicom_series(tmp_path)
    assert_matches_sitk(vol, sitk_series(tmp_path))
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, oblique_ct.array)
    assert vol.same_grid(oblique_ct, atol=1e-6)
    d = vol.direction_matrix
    np.testing.assert_allclose(np.cross(d[:, 0], d[:, 1]), d[:, 2], atol=1e-9)  # normal = row x col
    assert vol.metadata["WindowCenter"] == 40.0 and vol.metadata["WindowWidth"] == 400.0
    assert len(vol.metadata["SOPInstanceUIDs"]) == 16
    assert not any(p in repr(vol.metadata) for p in PHI)


def test_left_handed_direction_is_resorted_like_simpleitk(tmp_path, oblique_ct, sitk_series, assert_matches_sitk):
    d = oblique_ct.direction_matrix.copy()
    d[:, 2] *= -1  # slices stacked against the row x col normal
    flipped = oblique_ct.with_array(oblique_ct.array, direction=tuple(d.ravel()))
    write_dicom_series(flipped, tmp_path)
    vol = read_dicom_series(tmp_path)
    assert_matches_sitk(vol, sitk_series(tmp_path))
    np.testing.assert_array_equal(vol.array, oblique_ct.array[::-1])
    np.testing.assert_allclose(vol.direction_matrix[:, 2], -d[:, 2], atol=1e-9)
    np.testing.assert_allclose(vol.origin, flipped.index_to_physical([0, 0, 15]), atol=1e-6)


def test_float_rescale_gives_float32_matching_simpleitk(tmp_path, make_volume, sitk_series, assert_matches_sitk):
    vol = make_volume(seed=2, oblique=False, low=0, high=3000)
    src = vol.with_array(vol.array * 0.25)
    write_dicom_series(src, tmp_path, modality="MR", rescale_slope=0.25, rescale_intercept=0.0)
    out = read_dicom_series(tmp_path)
    assert out.array.dtype == np.float32 and out.modality == "MR"
    np.testing.assert_array_equal(out.array, src.array.astype(np.float32))
    assert_matches_sitk(out, sitk_series(tmp_path))


def test_multiframe_matches_simpleitk(tmp_path, oblique_ct, assert_matches_sitk):
    path = write_multiframe(oblique_ct, tmp_path / "enhanced.dcm", window=(50, 350))
    vol = read_dicom_series(path)
    assert_matches_sitk(vol, sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(vol.array, oblique_ct.array)
    assert vol.same_grid(oblique_ct, atol=1e-6)
    assert vol.metadata["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.2.1" and vol.metadata["WindowWidth"] == 350.0
    scan = scan_dicom_folder(tmp_path)
    assert len(scan.series) == 1 and scan.series[0].n_frames == 16 and len(scan.series[0].files) == 1


def test_series_info_reuses_headers_and_reads_each_file_once(tmp_path, axial_ct, monkeypatch):
    write_dicom_series(axial_ct, tmp_path)
    scan = scan_dicom_folder(tmp_path)
    (info,) = scan.series
    assert len(info.files) == 16 and info.n_frames == 16 and info.modality == "CT" and scan.skipped == []

    def no_parse(*args, **kwargs):
        raise AssertionError("header parsed again")

    monkeypatch.setattr(dicom_headers.pydicom, "dcmread", no_parse)
    vol = read_dicom_series(info)
    np.testing.assert_array_equal(vol.array, axial_ct.array)
    assert vol.spacing == pytest.approx((0.5, 0.6, 3.0))


@pytest.mark.parametrize("delete, expected", [((), 3.0), (("SpacingBetweenSlices",), 2.0),
                                              (("SpacingBetweenSlices", "SliceThickness"), 1.0)])
def test_single_slice_z_spacing(tmp_path, make_volume, delete, expected):
    (path,) = write_dicom_series(make_volume(shape=(1, 4, 5), spacing=(1, 1, 3.0)), tmp_path)
    _edit(path, **{"SliceThickness": 2.0, **{kw: None for kw in delete}})
    assert read_dicom_series(tmp_path).spacing[2] == pytest.approx(expected)


# --- broken input --------------------------------------------------------------------------------------------
def _series(tmp_path, volume):
    return write_dicom_series(volume, tmp_path / "series", file_names="index")


def test_truncated_pixel_data_names_the_file(tmp_path, axial_ct):
    paths = _series(tmp_path, axial_ct)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) - 300])  # cut inside the pixel data
    for source in (tmp_path / "series", paths):
        with pytest.raises(InputError) as err:
            read_dicom_series(source)
        assert err.value.path == str(paths[5]) and "truncated pixel data" in err.value.reason


@pytest.mark.parametrize("z", [15, 7])  # the last slice (was silently dropped) and one in the middle
def test_truncated_header_fails_its_series_and_is_named(tmp_path, axial_ct, z):
    paths = _series(tmp_path, axial_ct)
    paths[z].write_bytes(paths[z].read_bytes()[:400])  # cut inside the header: its series UID is gone too
    scan = scan_dicom_folder(tmp_path / "series")
    assert [(p.name, "truncated DICOM header" in r) for p, r in scan.skipped] == [(f"IM{z:04d}.dcm", True)]
    (info,) = scan.series
    assert info.n_frames == 15 and [p.name for p, _ in info.unreadable] == [f"IM{z:04d}.dcm"]
    for source in (tmp_path / "series", info):
        with pytest.raises(InputError) as err:
            read_dicom_series(source)
        assert not isinstance(err.value, SeriesGeometryError)  # not reported as a "missing slice"
        assert err.value.path == str(paths[z])
        assert err.value.reason.startswith("unreadable DICOM file in the folder of CT series 1 (15 slices): "
                                           "truncated DICOM header")
        assert "remove or replace it" in err.value.reason


def test_truncated_file_fails_only_the_series_it_can_belong_to(tmp_path, make_volume):
    ct, mr = make_volume(seed=3, shape=(4, 6, 5)), make_volume(seed=4, shape=(3, 5, 6), oblique=False, low=0)
    write_dicom_series(ct, tmp_path / "ct", series_description="CT thorax", seed=1, file_names="index")
    mr_paths = write_dicom_series(mr, tmp_path / "mr", modality="MR", series_description="T1 axial", seed=2,
                                  file_names="index")
    mr_paths[-1].write_bytes(mr_paths[-1].read_bytes()[:400])
    scan = scan_dicom_folder(tmp_path)
    by_mod = {s.modality: s for s in scan.series}
    assert by_mod["CT"].unreadable == [] and [p for p, _ in by_mod["MR"].unreadable] == [mr_paths[-1]]
    np.testing.assert_array_equal(read_dicom_series(by_mod["CT"]).array, ct.array)
    with pytest.raises(InputError, match="unreadable DICOM file in the folder of MR series 3 'T1 axial' "
                                         r"\(2 slices\)") as err:
        read_dicom_series(by_mod["MR"])
    assert err.value.path == str(mr_paths[-1])
    # A broken file beside both series could be a slice of either: both fail, naming it.
    (tmp_path / "ct" / "x.dcm").write_bytes(mr_paths[0].read_bytes()[:400])
    (tmp_path / "mr" / "IM0002.dcm").unlink()
    shutil.move(tmp_path / "ct" / "x.dcm", tmp_path / "x.dcm")
    scan = scan_dicom_folder(tmp_path)
    assert all([p.name for p, _ in s.unreadable] == ["x.dcm"] for s in scan.series)


@pytest.mark.parametrize("changes, reason", [
    ({"PixelData": None}, "PixelData"),
    ({"ImagePositionPatient": None}, "ImagePositionPatient"),
    ({"ImageOrientationPatient": None}, "ImageOrientationPatient"),
    ({"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}, "ImageOrientationPatient differs"),
    ({"PixelSpacing": [0.6, 0.9]}, "PixelSpacing"),
    ({"Rows": 10}, "image size 24x10 differs from 24x20"),
])
def test_broken_slice_raises_geometry_error(tmp_path, axial_ct, changes, reason):
    paths = _series(tmp_path, axial_ct)
    _edit(paths[7], **changes)
    with pytest.raises(SeriesGeometryError) as err:
        read_dicom_series(tmp_path / "series")
    assert err.value.path == str(paths[7]) and reason in err.value.reason


def test_duplicate_slice(tmp_path, axial_ct):
    paths = _series(tmp_path, axial_ct)
    dup = tmp_path / "series" / "copy.dcm"
    shutil.copy(paths[3], dup)
    _edit(dup, SOPInstanceUID=pydicom.uid.generate_uid(entropy_srcs=["dup"]))
    with pytest.raises(SeriesGeometryError, match="duplicate slice position") as err:
        read_dicom_series(tmp_path / "series")
    assert "IM0003.dcm" in err.value.reason and "copy.dcm" in err.value.reason


def test_missing_slice(tmp_path, axial_ct):
    paths = _series(tmp_path, axial_ct)
    paths[8].unlink()
    with pytest.raises(SeriesGeometryError, match="missing slice") as err:
        read_dicom_series(tmp_path / "series")
    assert "IM0007.dcm" in err.value.reason and "IM0009.dcm" in err.value.reason and "6.000 mm" in err.value.reason


def test_uneven_spacing_and_sheared_stack(tmp_path, axial_ct):
    paths = _series(tmp_path, axial_ct)
    x, y, z = (float(v) for v in pydicom.dcmread(paths[9]).ImagePositionPatient)
    _edit(paths[9], ImagePositionPatient=[x, y, z + 0.4])
    with pytest.raises(SeriesGeometryError, match="uneven slice spacing") as err:
        read_dicom_series(tmp_path / "series")
    assert "IM0009.dcm" in err.value.reason
    _edit(paths[9], ImagePositionPatient=[x + 2.0, y, z])  # right z, shifted in-plane: gantry-tilt-like shear
    with pytest.raises(SeriesGeometryError, match="sheared"):
        read_dicom_series(tmp_path / "series")


def test_two_series_in_one_folder(tmp_path, make_volume):
    ct, mr = make_volume(seed=3, shape=(4, 6, 5)), make_volume(seed=4, shape=(3, 5, 6), oblique=False, low=0)
    write_dicom_series(ct, tmp_path, series_description="CT thorax", seed=1)
    write_dicom_series(mr, tmp_path / "sub", modality="MR", series_description="T1 axial", seed=2)
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "rtstruct.dcm")  # non-image object: ignored
    with pytest.raises(InputError) as err:
        read_dicom_series(tmp_path)
    msg = str(err.value)
    assert err.value.path == str(tmp_path) and "2 image series" in msg
    assert "CT 'CT thorax' (4 files" in msg and "MR 'T1 axial' (3 files" in msg
    assert not any(p in msg for p in PHI)
    scan = scan_dicom_folder(tmp_path)
    assert sorted(s.modality for s in scan.series) == ["CT", "MR", "RTSTRUCT"]
    by_mod = {s.modality: s for s in scan.series}
    assert not by_mod["RTSTRUCT"].is_image and by_mod["CT"].is_image and by_mod["RTSTRUCT"].n_frames == 0
    with pytest.raises(SeriesGeometryError, match="missing PixelData, Rows/Columns"):
        read_dicom_series(tmp_path, series_uid=by_mod["RTSTRUCT"].series_uid)
    np.testing.assert_array_equal(read_dicom_series(tmp_path, series_uid=by_mod["CT"].series_uid).array, ct.array)
    mr_vol = read_dicom_series(tmp_path, series_uid=by_mod["MR"].series_uid)
    np.testing.assert_array_equal(mr_vol.array, mr.array)
    assert mr_vol.metadata["SeriesDescription"] == "T1 axial"
    assert scan_dicom_folder(tmp_path, recursive=False).series[0].description == "CT thorax"
    with pytest.raises(InputError, match="no series with SeriesInstanceUID 1.2.3"):
        read_dicom_series(tmp_path, series_uid="1.2.3")


def test_nonfinite_rescaled_values_are_rejected_or_filled(tmp_path, axial_ct):
    paths = _series(tmp_path, axial_ct)
    _edit(paths[4], RescaleSlope="NaN")  # not valid DS, but real exports hold such values
    _edit(paths[9], RescaleSlope=1e36)  # stored * 1e36 overflows float32 where stored > 340
    stored = pydicom.dcmread(paths[9]).pixel_array.astype(np.float64)
    overflow = int(np.sum(stored * 1e36 - 1024.0 > np.finfo(np.float32).max))
    assert 0 < overflow < stored.size == 480
    with pytest.raises(InputError) as err:
        read_dicom_series(tmp_path / "series")
    assert err.value.path == str(paths[4])
    assert err.value.reason.startswith(f"{480 + overflow} non-finite voxels (480 NaN, {overflow} +Inf) of 7680 "
                                       "after RescaleSlope/RescaleIntercept, in 2 slices (first: IM0004.dcm)")
    vol = read_dicom_series(tmp_path / "series", fill_nonfinite=-1000.0)
    assert vol.metadata["nonfinite_filled"] == 480 + overflow and np.all(vol.array[4] == -1000.0)
    np.testing.assert_array_equal(vol.array[:4], axial_ct.array[:4])


def test_non_dicom_file_is_skipped(tmp_path, axial_ct):
    _series(tmp_path, axial_ct)
    (tmp_path / "series" / "notes.dcm").write_text("this is not DICOM\n" * 20)
    scan = scan_dicom_folder(tmp_path / "series")
    assert [(p.name, "not a DICOM file" in r) for p, r in scan.skipped] == [("notes.dcm", True)]
    np.testing.assert_array_equal(read_dicom_series(tmp_path / "series").array, axial_ct.array)
    with pytest.raises(InputError) as err:
        read_dicom_series([tmp_path / "series" / "notes.dcm"])
    assert err.value.path.endswith("notes.dcm") and "not a DICOM file" in err.value.reason


def test_empty_or_dicom_free_folder(tmp_path):
    with pytest.raises(InputError) as err:
        read_dicom_series(tmp_path)
    assert err.value.path == str(tmp_path) and "no DICOM files found (0 files)" in err.value.reason
    (tmp_path / "a.dcm").write_bytes(b"\0" * 10)
    with pytest.raises(InputError, match=r"no DICOM files found \(1 files\); skipped 1: a.dcm"):
        scan_dicom_folder(tmp_path)
    with pytest.raises(InputError, match="folder does not exist"):
        scan_dicom_folder(tmp_path / "nope")
