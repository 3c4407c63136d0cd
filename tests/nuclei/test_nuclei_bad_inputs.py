"""Bad nucleus inputs: a clear message naming the file, the rest converted, every failure in the manifest."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from scipy.io import loadmat, savemat

from medtf.data.manifest import read_manifest
from tests.conftest import TEST_SALT, run_medtf
from tests.nuclei.conftest import check_boxes, decoded


def _convert(src, out, *extra):
    return run_medtf("convert", "nuclei-he", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "0.5,0.25,0.25", *extra)


def _failures(manifest) -> list[tuple[str | None, str]]:
    """Sorted (file name, reason) of every failure; the engine writes folder names only as pseudonyms."""
    def leaf(path):
        return None if path is None else Path(path).name if Path(path).suffix else "<folder>"

    return sorted(((leaf(f["file"]), f["reason"]) for f in manifest["failures"]), key=str)


def test_bad_consep_files_are_recorded_and_the_rest_converted(nuclei_source, tmp_path):
    src = tmp_path / "consep"
    shutil.copytree(nuclei_source / "consep", src)
    root = src / "CoNSeP"
    mat = loadmat(root / "Train" / "Labels" / "train_1.mat")
    savemat(root / "Train" / "Labels" / "train_1.mat", {k: v for k, v in mat.items()
                                                         if not k.startswith("__") and k != "inst_type"})
    shutil.copy(root / "Test" / "Images" / "test_1.png", root / "Test" / "Images" / "test_2.png")
    (root / "Test" / "Labels" / "test_2.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    shutil.copy(root / "Test" / "Images" / "test_1.png", root / "Test" / "Images" / "test_3.png")  # no label
    shutil.copy(root / "Test" / "Labels" / "test_1.mat", root / "Test" / "Labels" / "test_4.mat")  # no image
    out = tmp_path / "out"
    assert _convert(src, out) == 1  # inputs failed: exit 1, the other cases are converted
    manifest = read_manifest(out)
    assert manifest["num_failed"] == 4
    failures = _failures(manifest)
    assert failures[0][0] == "test_2.mat" and failures[0][1].startswith("cannot read .mat file")
    assert failures[1:] == [
        ("test_3.png", "no .mat of the same name in the sibling Labels folder; skipped"),
        ("test_4.mat", "no .png of the same name in the sibling Images folder; skipped"),
        ("train_1.mat", "no 'inst_type' variable in the .mat file (found ['inst_centroid', 'inst_map', 'type_map'])"),
    ]
    examples = decoded(out)
    assert len(examples) == 1 and examples[0]["image"].shape == (400, 400, 3)  # test_1, untiled
    check_boxes(examples[0])
    assert run_medtf("verify", out) == 0


def _pannuke_with_problems(nuclei_source, tmp_path):
    src = tmp_path / "pannuke"
    shutil.copytree(nuclei_source / "pannuke", src)
    fold1 = src / "Fold 1" / "images" / "fold1"
    flat = src / "fold4"  # a good fold in the flat layout, stored as uint8
    flat.mkdir()
    np.save(flat / "images.npy", np.rint(np.load(fold1 / "images.npy")).astype(np.uint8))
    shutil.copy(fold1 / "types.npy", flat)
    shutil.copy(src / "Fold 1" / "masks" / "fold1" / "masks.npy", flat)
    images = np.load(fold1 / "images.npy")
    images[1, 10:20, 10:20] = np.nan  # one bad tile inside a good fold
    np.save(fold1 / "images.npy", images)
    masks2 = src / "Fold 2" / "masks" / "fold2" / "masks.npy"
    np.save(masks2, np.load(masks2)[:3])  # count mismatch
    wrong = src / "fold3"
    wrong.mkdir()
    np.save(wrong / "images.npy", images[:2, ..., 0])  # grey (N, H, W): wrong shape
    np.save(wrong / "masks.npy", np.zeros((2, 256, 256, 6)))
    np.save(wrong / "types.npy", np.asarray(["Colon", "Colon"]))
    no_types = src / "fold5"
    no_types.mkdir()
    shutil.copy(flat / "images.npy", no_types)
    shutil.copy(flat / "masks.npy", no_types)
    return src


def test_bad_pannuke_folds_and_tiles_are_recorded_and_the_rest_converted(nuclei_source, tmp_path):
    src = _pannuke_with_problems(nuclei_source, tmp_path)
    out = tmp_path / "out"
    assert _convert(src, out) == 1  # inputs failed: exit 1, the other cases are converted
    manifest = read_manifest(out)
    assert manifest["num_failed"] == 5
    assert _failures(manifest) == [
        ("<folder>", "PanNuke fold without types.npy (tissue names); fold skipped"),  # fold5
        ("images.npy", "expected (N, H, W, 3) RGB tiles, got shape (2, 256, 256); fold skipped"),  # fold3
        ("images.npy", "tile 1: pixel values outside 0-255 (or NaN); tile skipped"),  # Fold 1
        ("masks.npy", "masks (3, 256, 256) do not match images (4, 256, 256) (count or tile size differ); "
                      "fold skipped"),  # Fold 2
        (None, "case produced no examples"),  # tile 1 was the only Colon tile of Fold 1
    ]
    examples = decoded(out)
    assert len(examples) == 3 + 4  # Fold 1 without its bad tile + the flat fold4
    for e in examples:
        check_boxes(e)
    assert run_medtf("verify", out) == 0


def test_strict_stops_at_the_first_bad_fold(nuclei_source, tmp_path):
    src = _pannuke_with_problems(nuclei_source, tmp_path)
    assert _convert(src, tmp_path / "out", "--strict") == 2
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_mixed_layouts_and_bad_options_are_refused(nuclei_source, tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    assert _convert(nuclei_source, tmp_path / "a") == 2
    assert "both PanNuke folds and CoNSeP images" in caplog.text
    assert _convert(nuclei_source, tmp_path / "b", "--layout", "consep", "--tile-size", "256",
                    "--tile-overlap", "256") == 2
    assert "--tile-overlap must be in [0, 256)" in caplog.text
    assert not (tmp_path / "b" / "manifest.json").exists()
    # --layout picks one of the two, and --resize without tiles needs square images (these are)
    assert _convert(nuclei_source, tmp_path / "c", "--layout", "consep", "--resize", "200", "--split", "0.5,0.5") == 0
    assert {e["image"].shape for e in decoded(tmp_path / "c")} == {(200, 200, 3)}


def test_resize_of_a_non_square_image_is_a_clear_case_failure(nuclei_source, tmp_path):
    from PIL import Image

    src = tmp_path / "consep"
    shutil.copytree(nuclei_source / "consep", src)
    image = src / "CoNSeP" / "Test" / "Images" / "test_1.png"
    label = src / "CoNSeP" / "Test" / "Labels" / "test_1.mat"
    Image.fromarray(np.asarray(Image.open(image))[:300]).save(image)
    mat = loadmat(label)
    savemat(label, {"inst_map": mat["inst_map"][:300], "inst_type": mat["inst_type"]})
    out = tmp_path / "out"
    assert _convert(src, out, "--resize", "200", "--split", "1") == 1  # one of the two images converts
    manifest = read_manifest(out)
    assert _failures(manifest) == [
        ("test_1.png", "resizing needs square tiles; this tile is 300x400 (set a tile size)")]
    assert [e["image"].shape for e in decoded(out)] == [(200, 200, 3)]
