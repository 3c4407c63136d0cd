"""data.mosaic through make_dataset on CoNSeP-layout shards cut into tiles by `medtf convert nuclei-he`: tiles
regrouped per source image, crops across neighbouring tiles equal to the source image, one epoch = as many crops
as tiles, one seed = one sequence; whole-image shards (PanNuke) are refused with the fix named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medtf.data import make_dataset
from tests.conftest import TEST_SALT, run_medtf


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    from medtf.synth.nuclei_he import generate_nuclei_he

    root = tmp_path_factory.mktemp("mosaic")
    generate_nuclei_he(root / "src", cases=1, seed=4, tile_size=32, folds=1, consep_images=1, consep_size=72)
    common = ["--id-salt", TEST_SALT, "--split", "1,0,0", "--quiet"]
    assert run_medtf("convert", "nuclei-he", "--input", root / "src" / "consep", "--output", root / "consep",
                     "--tile-size", "32", "--tile-overlap", "8", "--min-visible", "0", *common) == 0
    assert run_medtf("convert", "nuclei-he", "--input", root / "src" / "pannuke", "--output", root / "pannuke",
                     *common) == 0
    sources = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "src" / "consep").rglob("*.png"))]
    return root, sources


def test_crops_across_tiles_equal_the_source_image_and_keep_the_epoch_size(tiled):
    root, sources = tiled
    kwargs = dict(batch_size=1, training=True, repeat=False, output="dict", seed=3,
                  mosaic={"min_visible": 0.5})
    crops = [{k: v.numpy()[0] for k, v in b.items()} for b in make_dataset(root / "consep", "train", **kwargs)]
    assert len(crops) == 9  # 72 px cut into 32 px tiles at 0, 24, 40: 3 x 3 tiles, one crop per tile
    across = 0
    for c in crops:
        assert c["image"].shape == (32, 32, 3)  # size null: the shards' tile size
        y, x = c["tile_origin"]
        across += bool(y not in (0, 24, 40) or x not in (0, 24, 40))
        # pixel for pixel the source image region at the crop's origin
        np.testing.assert_array_equal(np.rint(c["image"] * 255), sources[0][y:y + 32, x:x + 32])
        for (y0, x0, y1, x1), i in zip(c["boxes"].astype(int), c["instance_ids"]):
            assert 0 <= y0 < y1 <= 32 and 0 <= x0 < x1 <= 32 and (c["instances"][y0:y1, x0:x1] == i).any()
        assert set(np.unique(c["instances"])) - {0} == set(c["instance_ids"].tolist())  # map and boxes agree
    assert across > len(crops) // 2  # not tile-aligned: crops span neighbouring tiles
    again = [b["tile_origin"].numpy()[0].tolist() for b in make_dataset(root / "consep", "train", **kwargs)]
    assert again == [c["tile_origin"].tolist() for c in crops]  # one seed, one sequence


def test_whole_image_shards_are_refused(tiled):
    root, _ = tiled
    with pytest.raises(ValueError, match="no tile has neighbours"):
        make_dataset(root / "pannuke", "train", batch_size=1, training=True, mosaic={})
    with pytest.raises(ValueError, match="mosaic.sizes: unknown key"):
        make_dataset(root / "consep", "train", batch_size=1, training=True, mosaic={"sizes": 3})
