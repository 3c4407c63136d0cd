"""The synthetic LGG slices hold what makes a FLAIR threshold fail on real scans: bright unlabelled oedema, bright
scalp fat and CSF, a bias field, per-patient intensity scales and lesions of varied size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medtf.evaluation.baselines import fit_flair_threshold
from medtf.synth.lgg_mri import generate_lgg_mri, lgg_patient

FLAIR = 1


@pytest.fixture(scope="module")
def patients():
    return [lgg_patient(i, seed=0, num_slices=12, size=128) for i in range(6)]


def test_written_masks_are_the_tumour_only(tmp_path, patients):
    folders = generate_lgg_mri(tmp_path, cases=2, seed=0, num_slices=12, size=128)
    for folder, (name, image, tumour, oedema) in zip(folders, patients):
        assert folder.name == name
        for s in range(len(tumour)):
            written = np.array(Image.open(folder / f"{name}_{s + 1}_mask.tif")) > 0
            np.testing.assert_array_equal(written, tumour[s])
            np.testing.assert_array_equal(np.array(Image.open(folder / f"{name}_{s + 1}.tif")), image[s])
        assert oedema.sum() > 0.3 * tumour.sum() > 0 and not np.any(oedema & tumour)  # oedema: unlabelled


def test_oedema_as_bright_as_tumour_on_flair_but_not_on_t1(patients):
    for _, image, tumour, oedema in patients:
        flair, t1 = image[..., FLAIR].astype(float), image[..., 0].astype(float)
        assert flair[oedema].mean() > 0.85 * flair[tumour].mean()
        assert t1[tumour].mean() < 0.85 * t1[oedema].mean()  # what a model can use and a FLAIR threshold cannot


def test_bright_distractors_bias_and_scales(patients):
    sizes, brain_levels = [], []
    for _, image, tumour, _ in patients:
        flair = image[..., FLAIR].astype(float)
        s = int(np.argmax(tumour.sum(axis=(1, 2))))
        # the brightest FLAIR voxels of the tumour's largest slice are mostly not tumour (scalp fat, CSF, oedema)
        top = flair[s] >= np.percentile(flair[s], 99)
        assert np.mean(tumour[s][top]) < 0.5
        sizes.append(tumour.sum())
        brain_levels.append(np.median(flair[flair > 20]))
    assert max(sizes) > 3 * min(sizes)                       # small and large lesions
    assert max(brain_levels) > 1.2 * min(brain_levels)       # per-patient intensity scale


def test_flair_threshold_fails_even_chosen_on_the_same_patients(patients):
    oracle = fit_flair_threshold([(image, tumour) for _, image, tumour, _ in patients])
    assert oracle["train_dice"] < 0.45, oracle
