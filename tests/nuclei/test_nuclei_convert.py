"""nuclei-he conversion through the real `medtf` entry point: exact boxes after resizing/tiling, class ids that
match the type maps, the border rule, per-source-image splits, class names in the manifest."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.io import loadmat

from medtf.data.manifest import read_manifest
from tests.conftest import TEST_SALT, find_phi, run_medtf
from tests.nuclei.conftest import check_boxes, decoded

ORIGINS = [(0, 0), (0, 144), (144, 0), (144, 144)]  # 400 px, tile 256, overlap 64
# Two CoNSeP images (the split unit): train and val; a third split would stay empty, which is an error.
CONSEP_SPLIT = ("--split", "0.5,0.5")
CONSEP_MERGE = {1: 1, 2: 2, 3: 3, 4: 3, 5: 4, 6: 4, 7: 4}  # HoVer-Net: epithelial 3+4, spindle 5+6+7


def _convert(src, out, *extra):
    return run_medtf("convert", "nuclei-he", "--input", src, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "0.5,0.25,0.25", *extra)


def _nearest(array, size):
    return np.asarray(Image.fromarray(array.astype(np.int32)).resize((size, size), Image.NEAREST))


def _pannuke_tiles(root):
    """(image uint8, global instance map, type map 1..5, tissue) of every source tile."""
    tiles = []
    for fold in sorted((root / "pannuke").iterdir()):
        images, masks = np.load(next(fold.rglob("images.npy"))), np.load(next(fold.rglob("masks.npy")))
        types = np.load(next(fold.rglob("types.npy")))
        for image, mask, tissue in zip(images, masks, types):
            inst, tmap = mask[..., :5].sum(-1).astype(np.int32), np.argmax(mask[..., :5], -1) + 1
            tiles.append((np.rint(image).astype(np.uint8), inst, np.where(inst > 0, tmap, 0), str(tissue)))
    return tiles


def _consep_sources(root):
    out = []
    for png in sorted((root / "consep").rglob("*.png")):
        mat = loadmat(png.parent.parent / "Labels" / f"{png.stem}.mat")
        out.append((np.asarray(Image.open(png))[..., :3], mat["inst_map"].astype(np.int32),
                    mat["inst_type"][:, 0].astype(int), mat["type_map"]))
    return out


def _border_rule(crop, full_area, min_visible):
    visible = np.bincount(crop.ravel(), minlength=full_area.size)
    kept = [k for k in np.unique(crop) if k and visible[k] >= min_visible * full_area[k]]
    return np.where(np.isin(crop, kept), crop, 0)


@pytest.fixture(scope="module")
def pannuke_448(nuclei_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("pannuke") / "shards"
    assert _convert(nuclei_source / "pannuke", out, "--resize", "448") == 0
    return out


def test_pannuke_resized_boxes_classes_and_pixels(nuclei_source, pannuke_448):
    sources = _pannuke_tiles(nuclei_source)
    examples = decoded(pannuke_448)
    assert len(examples) == len(sources) == 8
    matched = set()
    for e in examples:
        check_boxes(e)
        assert e["image"].shape == (448, 448, 3) and e["instances"].shape == (448, 448)
        assert e["scale"] == pytest.approx(1.75) and e["tile_origin"].tolist() == [0, 0]
        i = next(i for i, s in enumerate(sources)
                 if np.array_equal(e["image"], np.asarray(Image.fromarray(s[0]).resize((448, 448), Image.BILINEAR))))
        matched.add(i)
        _, inst, tmap, tissue = sources[i]
        assert e["tissue"].decode() == tissue
        inst_r, tmap_r = _nearest(inst, 448), _nearest(tmap, 448)
        np.testing.assert_array_equal(e["instances"] > 0, inst_r > 0)
        for k, cls in zip(e["instance_ids"], e["classes"]):
            assert np.unique(inst_r[e["instances"] == k]).size == 1  # one source nucleus per output instance
            assert np.unique(tmap_r[e["instances"] == k]).tolist() == [cls]  # class id = PanNuke channel + 1
        assert e["instance_ids"].size == np.unique(inst_r).size - 1  # and every surviving nucleus is there
    assert matched == set(range(8))


def test_pannuke_manifest_and_tissue_fold_splits(pannuke_448):
    manifest = read_manifest(pannuke_448)
    options = manifest["options"]
    assert options["class_names"] == ["background", "neoplastic", "inflammatory", "connective", "dead", "epithelial"]
    assert options["layout"] == "pannuke" and options["split_unit"] == "tissue-fold" and options["resize"] == 448
    assert manifest["failures"] == []
    # 2 folds x {Breast, Colon, Lung} = 6 split units; each holds one tissue, each tissue sits in two units
    strata = manifest["split"]["strata"]
    assert len(strata) == 6 and sorted(strata.values()) == ["Breast", "Breast", "Colon", "Colon", "Lung", "Lung"]
    tissue_of = {}
    for split in manifest["splits"]:
        for e in decoded(pannuke_448, split):
            p = e["patient_id"].decode()
            assert p in manifest["splits"][split]["patients"]
            assert tissue_of.setdefault(p, e["tissue"].decode()) == e["tissue"].decode() == strata[p]
    assert sum(s["num_examples"] for s in manifest["splits"].values()) == 8


def test_pannuke_tile_split_unit(nuclei_source, tmp_path):
    assert _convert(nuclei_source / "pannuke", tmp_path / "out", "--split-unit", "tile") == 0
    manifest = read_manifest(tmp_path / "out")
    assert sum(s["num_patients"] for s in manifest["splits"].values()) == 8
    assert manifest["options"]["split_unit"] == "tile"


@pytest.mark.parametrize("extra, min_visible, size", [
    ((), 0.5, 256),
    (("--class-map", "original", "--resize", "192", "--min-visible", "0.3"), 0.3, 192),
])
def test_consep_tiles_boxes_border_rule_and_classes(nuclei_source, tmp_path, extra, min_visible, size):
    out = tmp_path / "out"
    assert _convert(nuclei_source / "consep", out, "--tile-size", "256", "--tile-overlap", "64", *CONSEP_SPLIT,
                    *extra) == 0
    original = "original" in extra
    manifest = read_manifest(out)
    assert len(manifest["options"]["class_names"]) == (8 if original else 5)
    sources = _consep_sources(nuclei_source)
    examples = decoded(out)
    assert len(examples) == 4 * len(sources)
    by_source = {}
    for e in examples:
        check_boxes(e)
        y, x = e["tile_origin"].tolist()
        assert e["scale"] == pytest.approx(size / 256) and e["instances"].shape == (size, size)
        if size == 256:
            j = next(j for j, s in enumerate(sources) if np.array_equal(e["image"], s[0][y:y + 256, x:x + 256]))
        else:
            j = next(j for j, s in enumerate(sources) if np.array_equal(
                e["image"],
                np.asarray(Image.fromarray(s[0][y:y + 256, x:x + 256]).resize((size, size), Image.BILINEAR))))
        by_source.setdefault(j, []).append(((y, x), e["patient_id"]))
        image, inst, types, type_map = sources[j]
        expect = _border_rule(inst[y:y + 256, x:x + 256], np.bincount(inst.ravel()), min_visible)
        np.testing.assert_array_equal(e["instances"], _nearest(expect, size))  # ids are the source inst_map ids
        mapped = types if original else np.asarray([CONSEP_MERGE[t] for t in types])
        assert e["classes"].tolist() == [mapped[k - 1] for k in e["instance_ids"]]
        tiles_type = _nearest(type_map[y:y + 256, x:x + 256], size)
        for k, cls in zip(e["instance_ids"], e["classes"]):
            merged = {CONSEP_MERGE[t] if not original else t for t in np.unique(tiles_type[e["instances"] == k])}
            assert merged == {cls}
    assert len(by_source) == len(sources)
    for tiles in by_source.values():  # all tiles of a source image, one patient (so one split)
        assert sorted(o for o, _ in tiles) == ORIGINS and len({p for _, p in tiles}) == 1


def test_border_rule_drops_some_and_keeps_clipped_nuclei(nuclei_source, tmp_path):
    """With min-visible 1 only whole nuclei survive; with 0 every visible piece does (counts differ)."""
    counts = {}
    for mv in ("0", "1"):
        out = tmp_path / mv
        assert _convert(nuclei_source / "consep", out, "--tile-size", "256", "--tile-overlap", "64",
                        "--min-visible", mv, *CONSEP_SPLIT) == 0
        examples = decoded(out)
        counts[mv] = sum(e["instance_ids"].size for e in examples)
        touching = sum(int(((e["boxes"][:, :2] == 0) | (e["boxes"][:, 2:] == 256)).any(1).sum()) for e in examples)
        if mv == "1":  # a nucleus touching the border is whole only if it really ends there: rare
            assert touching < 0.05 * counts[mv]
        else:
            assert touching > 10
    assert counts["0"] > counts["1"] + 10


def test_no_source_identifiers_in_output(nuclei_source, pannuke_448):
    needles = ["pannuke:", "consep:", "Fold 1", "train_1", str(nuclei_source)]
    assert find_phi(pannuke_448, needles) == []
