"""`medtf synth image-folders`: the Kaggle layout, deterministic, mixed formats, and not separable by mean intensity."""

from __future__ import annotations

import numpy as np

from medtf.synth.image_folders import brain_slice, generate_image_folders
from tests.conftest import sha256_tree
from tfrecords_builder.image_files import read_2d


def _auc(pos, neg) -> float:
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def test_layout_formats_and_determinism(tmp_path):
    files = generate_image_folders(tmp_path / "a", cases=12, seed=5, size=64)
    assert len(files) == 24 and {p.parent.name for p in files} == {"yes", "no"}
    assert {p.suffix for p in files} >= {".jpg", ".png"}  # mixed formats, as the Kaggle set
    shapes = {read_2d(p).shape for p in files}
    assert len(shapes) > 5 and any(len(s) == 3 for s in shapes) and any(len(s) == 2 for s in shapes)
    generate_image_folders(tmp_path / "b", cases=12, seed=5, size=64)
    assert sha256_tree(tmp_path / "a") == sha256_tree(tmp_path / "b")
    generate_image_folders(tmp_path / "c", cases=12, seed=6, size=64)
    assert sha256_tree(tmp_path / "a") != sha256_tree(tmp_path / "c")


def test_mean_intensity_does_not_separate_the_classes():
    means = {True: [], False: []}
    for tumour in (True, False):
        for i in range(120):  # 120 per class: chance alone moves the AUC by about +-0.04 (1 sd)
            rng = np.random.default_rng([11, int(tumour), i])
            means[tumour].append(brain_slice(rng, (64, 64), tumour).mean())
    auc = _auc(means[True], means[False])
    assert 0.38 <= auc <= 0.62, auc


def test_the_tumour_is_a_local_change_inside_the_brain():
    # Same random draws up to the tumour: the difference is a compact blob inside the head, not a global shift.
    diffs = []
    for i in range(10):
        with_tumour = brain_slice(np.random.default_rng([3, i]), (96, 96), True)
        without = brain_slice(np.random.default_rng([3, i]), (96, 96), False)
        changed = np.abs(with_tumour - without) > 0.08
        diffs.append(changed.mean())
        ys, xs = np.nonzero(changed)
        assert len(ys) and 10 < ys.mean() < 86 and 10 < xs.mean() < 86
    assert 0.002 < np.median(diffs) < 0.15
