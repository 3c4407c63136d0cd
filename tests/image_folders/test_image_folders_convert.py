"""image-folders through the real `medtf` entry point: classes, crop/grayscale/resize by NumPy reference, DICOM,
patient-level splits from a file-name pattern, bad input recorded while the rest converts, and the parsed
example feeding the classification task."""

from __future__ import annotations

import numpy as np
import pytest

from medtf.data.manifest import read_manifest
from medtf.io.volume import Volume
from tests.conftest import find_phi, run_medtf
from tests.image_folders.conftest import convert, examples, write_png


def _block_image(rgb: bool, value=(200, 120, 40)) -> np.ndarray:
    """40x50 black image with a bright block at rows 5..29, columns 10..44 (a gradient inside)."""
    image = np.zeros((40, 50, 3), np.uint8)
    ramp = np.linspace(0, 50, 35).astype(np.uint8)[None, :, None]
    image[5:30, 10:45] = np.asarray(value, np.uint8) + ramp
    return image if rgb else image[..., 0]


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("image_folders")
    src, out = root / "src", root / "shards"
    assert run_medtf("synth", "image-folders", "--out", src, "--cases", 6, "--seed", 3) == 0
    assert convert(src, out, "--grayscale", "--resize", "32", "--crop-black-margin", "--split", "0.5,0.25,0.25") == 0
    return src, out


def test_synthetic_tree_converts_with_classes_from_folders(synthetic_run):
    src, out = synthetic_run
    manifest = read_manifest(out)
    assert manifest["kind"] == "image-folders" and manifest["failures"] == []
    options = manifest["options"]
    assert options["class_names"] == ["no", "yes"] and options["channels"] == 1 and options["resize"] == [32, 32]
    assert options["split_unit"].startswith("image (no --patient-regex")
    got = examples(out)
    assert len(got) == 12 == sum(s["num_patients"] for s in manifest["splits"].values())
    for e in got:
        assert e["image"].shape == (32, 32, 1) and e["image"].dtype == np.uint8
        assert e["class_name"].decode() == ("yes" if e["label"] == 1 else "no")
        top, left, bottom, right = e["crop_box"]
        assert 0 < top < bottom < e["source_shape"][0] and 0 < left < right < e["source_shape"][1]  # margin cut
    assert sorted(int(e["label"]) for e in got) == [0] * 6 + [1] * 6
    assert run_medtf("verify", out) == 0


def test_parsed_example_feeds_the_classification_task(synthetic_run):
    from medtf.data import make_dataset
    from medtf.tasks import get_task

    _, out = synthetic_run
    ds = make_dataset(out, "train", batch_size=2, training=False, repeat=False, output="dict")
    batch = next(iter(ds))
    assert batch["image"].shape[1:] == (32, 32, 1) and batch["image"].dtype.name == "float32"
    assert float(batch["image"].numpy().max()) <= 1.0 and float(batch["image"].numpy().max()) > 0.3  # /255
    x, y = get_task("classification").model_inputs()({k: v[0] for k, v in batch.items()})
    assert x.shape == (32, 32, 1) and y.numpy().tolist() == [float(batch["label"][0])]


def test_crop_grayscale_resize_match_numpy(tmp_path):
    src = tmp_path / "src"
    rgb = _block_image(rgb=True)
    write_png(src / "a" / "rgb.png", rgb)
    write_png(src / "b" / "gray.png", _block_image(rgb=False))
    out = tmp_path / "crop"
    assert convert(src, out, "--crop-black-margin", "--grayscale", "--split", "1,0,0") == 0
    by_class = {e["class_name"].decode(): e for e in examples(out)}
    luma = np.clip(np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(by_class["a"]["image"][..., 0], luma[5:30, 10:45])
    np.testing.assert_array_equal(by_class["a"]["crop_box"], [5, 10, 30, 45])
    np.testing.assert_array_equal(by_class["b"]["image"][..., 0], _block_image(rgb=False)[5:30, 10:45])

    out = tmp_path / "rgb"  # no grayscale: gray images are repeated to 3 channels; resize is PIL bicubic
    assert convert(src, out, "--resize", "20,30", "--split", "1,0,0") == 0
    from PIL import Image

    by_class = {e["class_name"].decode(): e for e in examples(out)}
    expected = np.asarray(Image.fromarray(_block_image(rgb=False)).resize((30, 20), Image.BICUBIC))
    assert by_class["b"]["image"].shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(by_class["b"]["image"][..., c], expected)


def test_dicom_and_16bit_inputs_scaled_to_uint8(tmp_path):
    from medtf.synth.dicom_writer import write_dicom_series

    src = tmp_path / "src"
    hu = np.rint(np.linspace(-400, 600, 24 * 20)).reshape(1, 24, 20).astype(np.float32)  # stored as integers
    files = write_dicom_series(Volume(hu, spacing=(0.8, 0.8, 2.0), origin=(0, 0, 0)), tmp_path / "dcm",
                               window=(40.0, 400.0))
    (src / "ct").mkdir(parents=True)
    files[0].rename(src / "ct" / "IM0001")  # no extension: recognised by the DICM marker
    deep = (np.arange(30 * 10, dtype=np.uint16).reshape(30, 10) * 200 + 1000)
    write_png(src / "png16" / "deep.png", deep)
    out = tmp_path / "out"
    assert convert(src, out, "--grayscale", "--split", "1,0,0") == 0
    by_class = {e["class_name"].decode(): e["image"][..., 0] for e in examples(out)}
    expected = np.rint(np.clip((hu[0] - (40 - 200)) / 400, 0, 1) * 255).astype(np.uint8)  # the stored window
    np.testing.assert_array_equal(by_class["ct"], expected)
    lo, hi = deep.min(), deep.max()
    np.testing.assert_array_equal(by_class["png16"], np.rint((deep - lo) / (hi - lo) * 255).astype(np.uint8))


def test_bad_inputs_are_recorded_and_the_rest_converts(tmp_path):
    src = tmp_path / "src"
    for cls in ("no", "yes"):
        for i in range(2):
            write_png(src / cls / f"img{i}.png", _block_image(rgb=True, value=(100 + 50 * i, 90, 30)))
    (src / "yes" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (src / "yes" / "notes.txt").write_text("radiologist notes")
    (src / "no" / ".DS_Store").write_bytes(b"hidden files are ignored")
    (src / "empty").mkdir()
    write_png(src / "no" / "black.png", np.zeros((20, 20), np.uint8))
    out = tmp_path / "out"
    assert convert(src, out, "--crop-black-margin", "--split", "1,0,0") == 1  # inputs failed: exit 1
    manifest = read_manifest(out)
    assert manifest["options"]["class_names"] == ["no", "yes"]  # the empty folder is not a class
    reasons = sorted(f["reason"] for f in manifest["failures"])
    assert len(reasons) == 4, reasons
    assert any("holds no image files" in r and "'empty'" in r for r in reasons)
    assert any("not an image file" in r and "'yes'" in r for r in reasons)
    assert any("cannot read PNG" in r for r in reasons)
    assert any("all black" in r for r in reasons)
    files = {f["file"] for f in manifest["failures"]}
    assert {"no/black.png", "yes/broken.png"} <= files and any(f.endswith("/notes.txt") for f in files)
    assert len(examples(out)) == 4 and manifest["num_failed"] == 4
    assert convert(src, tmp_path / "again", "--crop-black-margin", "--split", "1,0,0", "--allow-failures") == 0


def test_patient_regex_keeps_patients_in_one_split_and_pseudonymised(tmp_path):
    src = tmp_path / "src"
    patients = [f"PATQ{k:02d}" for k in range(8)]
    for k, pid in enumerate(patients):
        for j in range(2):
            cls = "yes" if (k + j) % 3 == 0 else "no"
            write_png(src / cls / f"{pid}_slice{j}.png", _block_image(rgb=False, value=(60 + 10 * k + j, 0, 0)))
    write_png(src / "no" / "unnamed.png", _block_image(rgb=False))
    (src / "yes" / "PATQ03_report.txt").write_text("a skipped file named by a patient")
    out = tmp_path / "out"
    assert convert(src, out, "--patient-regex", r"^(?P<patient>PATQ\d+)_", "--split", "0.5,0.25,0.25",
                   "--allow-failures") == 0
    manifest = read_manifest(out)
    assert manifest["options"]["split_unit"].startswith("patient")
    reasons = sorted(f["reason"] for f in manifest["failures"])
    assert reasons[0] == "file name does not match --patient-regex; skipped" and len(reasons) == 2
    assert "not an image file" in reasons[1]
    got = examples(out)
    assert len(got) == 16
    split_of = {}
    for split in manifest["splits"]:
        for e in examples(out, split):
            assert split_of.setdefault(e["patient_id"].decode(), split) == split
    assert len(split_of) == 8 and sum(s["num_patients"] for s in manifest["splits"].values()) == 8
    assert find_phi(out, patients) == []


def test_bad_options_are_usage_errors(tmp_path):
    src = tmp_path / "src"
    write_png(src / "a" / "x.png", _block_image(rgb=False))
    assert convert(src, tmp_path / "o1", "--classes", "a,zzz") == 2
    assert convert(src, tmp_path / "o2", "--resize", "0") == 2
    assert convert(src, tmp_path / "o3", "--patient-regex", "(unclosed") == 2
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "x.png", _block_image(rgb=False))
    assert convert(tmp_path / "flat", tmp_path / "o4") == 2  # no class folders
