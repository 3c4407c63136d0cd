"""brachy-ct end to end: synth -> convert -> inspect -> verify through the real `medtf` entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from scipy import ndimage
import pydicom
import pytest
import tensorflow as tf

from medtf.data.decoder import make_decoder
from medtf.data.deid import UID_PATTERN, IdHasher
from medtf.data.manifest import read_manifest, shard_paths
from medtf.data.schema import BRACHY_CT
from medtf.io.dicom_series import read_dicom_series
from medtf.rt import rasterize_polylines, read_brachy_plan
from medtf.synth.brachy_ct import brachy_case_identity
from tests.conftest import TEST_SALT, find_phi, run_medtf

CASES, SEED = 4, 11
UID_PSEUDONYM = IdHasher(TEST_SALT.encode(), prefix="uid")  # how the engine writes a DICOM UID
CT_LABEL = "CT series 12 'Synthetic breast brachytherapy planning CT' (48 slices)"  # SeriesNumber = seed + 1


def _examples(out: Path):
    manifest = read_manifest(out)
    files = [str(p) for p in shard_paths(out, manifest)]
    ds = tf.data.TFRecordDataset(files, compression_type=manifest["compression"] or "")
    return {e["patient_id"].decode(): e for e in ds.map(make_decoder(BRACHY_CT)).as_numpy_iterator()}


def _plan_file(folder: Path) -> Path:
    return next(p for p in folder.glob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTPLAN")


def _patient(folder: Path) -> str:
    """The pseudonym of a synthetic case folder's patient (folder SYNBR003 is case index 2)."""
    return IdHasher(TEST_SALT.encode())(brachy_case_identity(int(folder.name[-3:]) - 1, SEED).patient_id)


def _ct_files_by_z(folder: Path) -> list[Path]:
    return sorted((folder / "CT").iterdir(),
                  key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def _cut(path: Path, size: int = 400) -> None:
    """Leave only the first ``size`` bytes: the file ends inside its header, before its SeriesInstanceUID."""
    path.write_bytes(path.read_bytes()[:size])


def _second_ct_series(folder: Path, slices: int, number: int, description: str) -> None:
    """A copy of the case's CT as another series (new UIDs, files named by them) in the same frame of reference."""
    series_uid = pydicom.uid.generate_uid(entropy_srcs=[str(folder), description])
    for k, path in enumerate(_ct_files_by_z(folder)[:slices]):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, number, description
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
            entropy_srcs=[series_uid, str(k)])
        (folder / "CT2").mkdir(exist_ok=True)
        ds.save_as(folder / "CT2" / f"{ds.SOPInstanceUID}.dcm")


def _dicom_uids(root: Path) -> set[str]:
    """Every UID of every DICOM file under ``root`` (file meta, sequences, file names), but the standard's own."""
    found = set()

    def collect(_, elem):
        if elem.VR == "UI" and elem.value:
            found.update(str(v) for v in (elem.value if isinstance(elem.value, list) else [elem.value]))

    for path in root.rglob("*.dcm"):
        found.update(UID_PATTERN.findall(path.name))
        ds = pydicom.dcmread(path)
        ds.file_meta.walk(collect)
        ds.walk(collect)
    return {u for u in found if not u.startswith("1.2.840.10008.")}


@pytest.fixture(scope="module")
def brachy_source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("brachy") / "src"
    assert run_medtf("synth", "brachy-ct", "--out", src, "--cases", CASES, "--seed", SEED) == 0
    return src


@pytest.fixture(scope="module")
def brachy_out(brachy_source) -> Path:
    out = brachy_source.parent / "shards"
    assert run_medtf("convert", "brachy-ct", "--input", brachy_source, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "0.5,0.25,0.25", "--catheter-radius-mm", "1.0") == 0
    return out


def test_cli_inspect_and_verify(brachy_out, capsys):
    assert run_medtf("inspect", brachy_out) == 0
    text = capsys.readouterr().out
    assert "brachy-ct" in text and "train:" in text and "failed inputs: 0" in text
    assert sorted(p.name for p in (brachy_out / "previews").glob("*.png")) == ["test.png", "train.png", "val.png"]
    assert run_medtf("verify", brachy_out) == 0


def test_shards_hold_the_ct_and_plan_exactly(brachy_source, brachy_out):
    examples = _examples(brachy_out)
    hasher = IdHasher(TEST_SALT.encode())
    assert len(examples) == CASES
    for folder in sorted(brachy_source.iterdir()):
        example = examples[hasher(brachy_case_identity(int(folder.name[-3:]) - 1, SEED).patient_id)]
        ct = read_dicom_series(folder / "CT")
        plan = read_brachy_plan(_plan_file(folder))
        np.testing.assert_array_equal(example["image"], ct.array.astype(np.int16))
        np.testing.assert_allclose(example["spacing"], ct.spacing, atol=1e-5)
        np.testing.assert_allclose(example["origin"], ct.origin, atol=1e-4)
        np.testing.assert_allclose(example["direction"], ct.direction, atol=1e-6)
        offsets = example["catheter_offsets"]
        assert len(offsets) - 1 == len(plan.catheters)
        for k, catheter in enumerate(plan.catheters):
            np.testing.assert_allclose(example["catheter_points"][offsets[k]:offsets[k + 1]], catheter.points, atol=1e-3)
        mask, instances = rasterize_polylines(plan.polylines, ct, 1.0)
        np.testing.assert_array_equal(example["mask"], mask)
        np.testing.assert_array_equal(example["instances"], instances)
        assert example["instances"].max() == len(plan.catheters)
        # The catheters are visible in the CT: the synthetic plastic tubes have an air lumen (dummy wires, bright,
        # in some only), so the label holds air-dark voxels that the surrounding fat/gland (~-100..+40 HU) has not.
        image = example["image"][..., 0] if example["image"].ndim == 4 else example["image"]
        body = ndimage.binary_erosion(ndimage.binary_fill_holes(image > -500), iterations=2)
        inside = (np.asarray(example["mask"]).reshape(image.shape) > 0) & body
        assert inside.sum() > 100 and np.percentile(image[inside], 10) < -250


def test_no_phi_in_output(brachy_out):
    needles = set()
    for i in range(CASES):
        ident = brachy_case_identity(i, SEED)
        needles |= {ident.patient_id, ident.patient_name, ident.patient_name.replace("^", " "), ident.birth_date}
    assert find_phi(brachy_out, needles) == []


def test_resample_and_crop(brachy_source, tmp_path):
    out = tmp_path / "resampled"
    assert run_medtf("convert", "brachy-ct", "--input", brachy_source, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "0.5,0.25,0.25", "--spacing", "2,2,2", "--crop-margin-mm", "6") == 0
    assert run_medtf("verify", out) == 0
    for example in _examples(out).values():
        np.testing.assert_allclose(example["spacing"], [2, 2, 2])
        points = example["catheter_points"].astype(np.float64)
        index = (points - example["origin"]) @ np.linalg.inv(example["direction"].reshape(3, 3) * 2.0).T
        size_xyz = np.array(example["image"].shape[::-1])
        # The crop keeps every catheter vertex with at least ~the margin to the border (or the volume edge).
        assert (index >= -0.5).all() and (index <= size_xyz - 0.5).all()
        assert example["mask"].any() and example["image"].shape == example["mask"].shape


def test_bad_cases_are_recorded_and_the_rest_converted(brachy_source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(brachy_source, src)
    folders = sorted(src.iterdir())
    # 1: plan in a foreign frame of reference
    plan_path = _plan_file(folders[0])
    plan = pydicom.dcmread(plan_path)
    plan.FrameOfReferenceUID = "1.2.3.4.5.6.7.8.9"
    plan.save_as(plan_path)
    # 2: a folder without a plan
    _plan_file(folders[1]).unlink()
    # 3: an empty folder and a folder with a non-DICOM .dcm only
    (src / "EMPTY").mkdir()
    (src / "JUNK").mkdir()
    (src / "JUNK" / "x.dcm").write_text("not dicom")
    out = tmp_path / "out"
    assert run_medtf("convert", "brachy-ct", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "1,0,0") == 1  # inputs failed: exit 1, the other cases are converted
    manifest = read_manifest(out)
    reasons = " | ".join(f["reason"] for f in manifest["failures"])
    assert manifest["num_failed"] == 4, reasons
    assert "1.2.3.4.5.6.7.8.9" not in reasons and UID_PSEUDONYM("1.2.3.4.5.6.7.8.9") in reasons  # no raw UID
    assert "FrameOfReference" in reasons.replace(" ", "")
    assert "no RT Plan" in reasons and "empty folder" in reasons and "no readable DICOM" in reasons
    assert manifest["splits"]["train"]["num_examples"] == CASES - 2
    text = json.dumps(manifest)
    assert folders[0].name not in text and folders[1].name not in text


def test_two_folders_of_one_patient_share_a_split(brachy_source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(brachy_source, src)
    first = sorted(src.iterdir())[0]
    shutil.copytree(first, src / "ZZ_second_fraction")  # same PatientID, another folder
    out = tmp_path / "out"
    assert run_medtf("convert", "brachy-ct", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "0.5,0.5") == 0
    manifest = read_manifest(out)
    patient = IdHasher(TEST_SALT.encode())(brachy_case_identity(0, SEED).patient_id)
    holding = [name for name, s in manifest["splits"].items() if patient in s["patients"]]
    assert len(holding) == 1
    assert sum(s["num_examples"] for s in manifest["splits"].values()) == CASES + 1
    assert sum(s["num_patients"] for s in manifest["splits"].values()) == CASES


def test_a_ct_file_cut_inside_its_header_fails_its_case_and_is_named(brachy_source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(brachy_source, src)
    folders = sorted(src.iterdir())
    cut = {folders[0]: _ct_files_by_z(folders[0])[-1],  # the last slice: was dropped silently (47-slice CT)
           folders[1]: _ct_files_by_z(folders[1])[20]}  # a middle one: was only a "missing slice"
    for path in cut.values():
        _cut(path)
    out = tmp_path / "out"
    assert run_medtf("convert", "brachy-ct", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "1,0,0") == 1  # inputs failed: exit 1, the other cases are converted
    manifest = read_manifest(out)
    assert manifest["num_failed"] == 2, manifest["failures"]
    failures = {f["file"]: f["reason"] for f in manifest["failures"]}
    for folder, path in cut.items():
        reason = failures[f"{_patient(folder)}/CT/{UID_PSEUDONYM(path.stem)}.dcm"]  # the file, de-identified
        assert reason.startswith(f"unreadable DICOM file in the folder of {CT_LABEL.replace('48', '47')}: "
                                 "truncated DICOM header: "), reason
    assert manifest["splits"]["train"]["num_examples"] == CASES - 2


def test_no_raw_dicom_uid_in_any_output_file(brachy_source, tmp_path, caplog, capsys):
    src = tmp_path / "src"
    shutil.copytree(brachy_source, src)
    folders = sorted(src.iterdir())
    _second_ct_series(folders[2], 40, 7, "CT recon 2")  # 2 CTs: the message lists series, never their UIDs
    foreign = "1.2.826.0.1.3680043.8.498.4711.1"
    plan_path = _plan_file(folders[0])
    plan = pydicom.dcmread(plan_path)
    ct_for = plan.FrameOfReferenceUID
    plan.FrameOfReferenceUID = foreign
    plan.save_as(plan_path)
    uids = _dicom_uids(src)
    assert foreign in uids and ct_for in uids and len(uids) > 4 * 48
    cut_file = _ct_files_by_z(folders[1])[-1]  # named <SOPInstanceUID>.dcm
    _cut(cut_file)
    out = tmp_path / "out"
    caplog.clear()
    assert run_medtf("convert", "brachy-ct", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "1,0,0") == 1  # inputs failed: exit 1, the other cases are converted
    manifest = read_manifest(out)
    assert manifest["num_failed"] == 3, manifest["failures"]
    assert find_phi(out, uids) == []  # manifest, shards: no raw UID anywhere, also not in file names
    logged = caplog.text + capsys.readouterr().err
    assert [u for u in uids if u in logged] == []
    failures = {f["file"]: f["reason"] for f in manifest["failures"]}
    plan_name = plan_path.name.replace(plan.SOPInstanceUID, UID_PSEUDONYM(plan.SOPInstanceUID))  # RP.<uid>.dcm
    plan_failure = failures[f"{_patient(folders[0])}/{plan_name}"]
    assert (f"plan FrameOfReferenceUID {UID_PSEUDONYM(foreign)} differs from image FrameOfReferenceUID "
            f"{UID_PSEUDONYM(ct_for)}") in plan_failure  # still says which differ, by pseudonym
    assert f"{_patient(folders[1])}/CT/{UID_PSEUDONYM(cut_file.stem)}.dcm" in failures


def test_messages_list_the_ct_series_and_name_the_non_dicom_file(brachy_source, tmp_path):
    from PIL import Image

    src = tmp_path / "src"
    shutil.copytree(brachy_source, src)
    folders = sorted(src.iterdir())
    _second_ct_series(folders[0], 40, 7, "CT recon 2")
    shutil.rmtree(folders[1] / "CT")  # the CT exported as a PNG with a .dcm name
    (folders[1] / "CT").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folders[1] / "CT" / "IM0001.dcm", format="PNG")
    out = tmp_path / "out"
    assert run_medtf("convert", "brachy-ct", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "1,0,0") == 1  # inputs failed: exit 1, the other cases are converted
    failures = {f["file"].split("/")[0]: f["reason"] for f in read_manifest(out)["failures"]}
    assert failures[_patient(folders[0])] == (
        f"2 CT series share the plan's frame of reference: CT series 7 'CT recon 2' (40 slices); {CT_LABEL}. "
        "Keep only the CT the plan was made on in this patient folder (move the other series' files out)")
    assert failures[_patient(folders[1])] == "no CT image series in folder; not DICOM: CT/IM0001.dcm (a PNG image)"


def test_channel_numbers_are_stored_per_catheter(brachy_source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(brachy_source, src)
    folders = sorted(src.iterdir(), key=lambda f: -len(read_brachy_plan(_plan_file(f)).catheters))
    plan_path = _plan_file(folders[0])
    plan = pydicom.dcmread(plan_path)
    channels = plan.ApplicationSetupSequence[0].ChannelSequence
    numbers = [1, 2, 3, 5, 7, 9, 11, 13, 15, 17][: len(channels)]
    assert len(channels) >= 6
    for channel, number in zip(channels, numbers):
        channel.ChannelNumber = number
    plan.save_as(plan_path)
    out = tmp_path / "out"
    assert run_medtf("convert", "brachy-ct", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "1,0,0") == 0
    examples = _examples(out)
    assert examples[_patient(folders[0])]["channel_numbers"].tolist() == numbers  # channel 9 is label 6
    assert examples[_patient(folders[0])]["instances"].max() == len(numbers)
    for folder in folders[1:]:
        n = len(read_brachy_plan(_plan_file(folder)).catheters)
        assert examples[_patient(folder)]["channel_numbers"].tolist() == list(range(1, n + 1))


def test_shards_written_before_channel_numbers_still_decode():
    import dataclasses

    v1 = dataclasses.replace(BRACHY_CT, version=1, oldest_readable=None,
                             fields=tuple(f for f in BRACHY_CT.fields if f.name != "channel_numbers"))
    example = {"patient_id": "p-1", "example_id": "c-1-0000", "image": np.zeros((2, 3, 4), np.int16),
               "mask": np.zeros((2, 3, 4), np.uint8), "instances": np.zeros((2, 3, 4), np.uint8),
               "catheter_points": np.zeros((2, 3), np.float32), "catheter_offsets": [0, 2], "window": [40.0, 400.0],
               "spacing": [1.0, 1.0, 2.0], "origin": [0.0, 0.0, 0.0], "direction": np.eye(3).ravel()}
    decoded = make_decoder(BRACHY_CT)(tf.constant(v1.encode(example)))
    assert decoded["channel_numbers"].numpy().tolist() == [] and decoded["catheter_offsets"].numpy().tolist() == [0, 2]
    assert BRACHY_CT.reads(1) and BRACHY_CT.reads(2) and not BRACHY_CT.reads(3)
    unknown = make_decoder(BRACHY_CT)(tf.constant(BRACHY_CT.encode(example)))  # optional: written empty
    assert unknown["channel_numbers"].numpy().tolist() == []
