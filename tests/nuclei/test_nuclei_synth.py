"""The synthetic nucleus data: real layouts, consistent labels, and classes that differ as they do in H&E."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.io import loadmat

from medtf.synth.nuclei_he import PANNUKE_CLASSES, generate_nuclei_he


def _fold(root, k):
    base = root / "pannuke" / f"Fold {k}"
    return (np.load(base / "images" / f"fold{k}" / "images.npy"), np.load(base / "masks" / f"fold{k}" / "masks.npy"),
            np.load(base / "images" / f"fold{k}" / "types.npy"))


def test_pannuke_fold_layout_and_masks(nuclei_source):
    total = 0
    for k in (1, 2):
        images, masks, types = _fold(nuclei_source, k)
        assert images.dtype == np.float64 and images.shape == (4, 256, 256, 3) and images.max() > 200
        assert masks.dtype == np.float64 and masks.shape == (4, 256, 256, 6)
        assert types.tolist() == ["Breast", "Colon", "Lung", "Breast"]
        labelled = (masks[..., :5] > 0).sum(-1)
        assert labelled.max() == 1  # a pixel belongs to one class channel
        np.testing.assert_array_equal(masks[..., 5], labelled == 0)  # channel 5: background
        for n in range(4):
            ids = [set(np.unique(masks[n, ..., c])) - {0} for c in range(5)]
            assert all(ids), "every class occurs in every tile"
            assert sum(map(len, ids)) == len(set().union(*ids))  # ids unique across channels
            total += sum(map(len, ids))
    assert total > 8 * 40


def _features(images, masks):
    """Per nucleus: class, log area, elongation, darkness, fragments, white lumen nearby, chromatin texture (SD of
    the darkness inside), mean R, G, B."""
    rows = []
    for image, mask in zip(images, masks):
        white = (image > 225).all(-1)  # the lumen; stroma and cytoplasm are far less green
        for c in range(5):
            for value in np.unique(mask[..., c])[1:]:
                region = mask[..., c] == value
                ys, xs = np.nonzero(region)
                if ys.size < 5:
                    continue
                eig = np.sort(np.linalg.eigvalsh(np.cov(np.stack([ys, xs])))) + 0.1
                window = np.s_[max(ys.min() - 13, 0):ys.max() + 14, max(xs.min() - 13, 0):xs.max() + 14]
                ring = ndimage.binary_dilation(region[window], iterations=12) & ~region[window]
                dark = 765 - image[region].sum(-1)
                rows.append((c, np.log(ys.size), np.sqrt(eig[1] / eig[0]), dark.mean(), ndimage.label(region)[1],
                             white[window][ring].mean() > 0.05, dark.std(), *image[region].mean(0)))
    return np.asarray(rows, float)


def _nearest_centroid_accuracy(train, test, columns):
    """Accuracy on ``test`` of the nearest standardised class centroid of ``train`` over feature ``columns``."""
    mean, sd = train[:, columns].mean(0), train[:, columns].std(0)
    x, z = (train[:, columns] - mean) / sd, (test[:, columns] - mean) / sd
    centroids = np.stack([x[train[:, 0] == c].mean(0) for c in range(5)])
    return (np.argmin(((z[:, None] - centroids[None]) ** 2).sum(-1), axis=1) == test[:, 0]).mean()


def test_classes_differ_in_shape_texture_and_neighbourhood_not_colour(nuclei_source):
    """Issue #15 "Quality": size and hematoxylin density overlap between classes (a mean-RGB + area rule must not
    be enough); shape, chromatin texture and neighbourhood carry the class."""
    from medtf.evaluation.baselines import fit_softmax_regression

    train, test = (_features(*_fold(nuclei_source, k)[:2]) for k in (1, 2))
    median = {name: np.median(train[train[:, 0] == c], axis=0) for c, name in enumerate(PANNUKE_CLASSES)}
    mean = {name: train[train[:, 0] == c].mean(axis=0) for c, name in enumerate(PANNUKE_CLASSES)}
    area, elong, dark, pieces, lumen, texture = 1, 2, 3, 4, 5, 6
    assert median["inflammatory"][area] < median["epithelial"][area] < median["neoplastic"][area]
    assert median["inflammatory"][elong] < 1.3 and median["connective"][elong] > 2.5
    assert median["dead"][pieces] >= 2 and median["neoplastic"][pieces] == 1
    assert mean["epithelial"][lumen] > 0.7 and mean["inflammatory"][lumen] < 0.3  # epithelium lines a lumen
    assert median["neoplastic"][texture] > 1.3 * median["epithelial"][texture]  # vesicular vs even chromatin
    # Density overlaps: every class's darkness range covers the others' medians (no one-channel rule).
    for name in ("inflammatory", "connective", "epithelial"):
        values = train[train[:, 0] == PANNUKE_CLASSES.index(name), dark]
        assert all(np.percentile(values, 10) < median[n][dark] < np.percentile(values, 90)
                   for n in ("inflammatory", "connective", "epithelial") if n != name), name
    # The trivial baseline (mean RGB + log area, logistic regression, fold 1 -> fold 2) stays far from perfect ...
    baseline = fit_softmax_regression(train[:, [7, 8, 9, 1]], train[:, 0])
    assert (baseline.predict(test[:, [7, 8, 9, 1]]) == test[:, 0]).mean() < 0.75
    # ... while shape + texture + neighbourhood separate the classes (nearest centroid, fold 1 -> fold 2).
    assert _nearest_centroid_accuracy(train, test, [1, 2, 4, 5, 6]) > 0.85


def test_consep_images_and_mat_files_agree(nuclei_source):
    root = nuclei_source / "consep" / "CoNSeP"
    first = Image.open(root / "Train" / "Images" / "train_1.png")
    assert first.mode == "RGBA" and first.size == (400, 400)
    assert Image.open(root / "Test" / "Images" / "test_1.png").mode == "RGB"
    for mat_path in sorted(root.rglob("*.mat")):
        mat = loadmat(mat_path)
        inst, types = mat["inst_map"].astype(int), mat["inst_type"]
        k = types.shape[0]
        assert types.shape == (k, 1) and mat["inst_centroid"].shape == (k, 2) and k > 60
        assert set(np.unique(inst)) == set(range(k + 1))  # ids 1..K, consecutive
        assert set(types[:, 0].astype(int)) == set(range(1, 8))  # all seven CoNSeP types occur
        np.testing.assert_array_equal(mat["type_map"], np.concatenate([[0], types[:, 0]])[inst])
        for i in (1, k // 2, k):
            ys, xs = np.nonzero(inst == i)
            np.testing.assert_allclose(mat["inst_centroid"][i - 1], [xs.mean(), ys.mean()], atol=1e-6)


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a = generate_nuclei_he(tmp_path / "a", cases=2, seed=5, folds=1, consep_images=1, consep_size=256)
    b = generate_nuclei_he(tmp_path / "b", cases=2, seed=5, folds=1, consep_images=1, consep_size=256)
    c = generate_nuclei_he(tmp_path / "c", cases=2, seed=6, folds=1, consep_images=1, consep_size=256)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)
    del c
