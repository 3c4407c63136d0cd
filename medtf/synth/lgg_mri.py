"""Synthetic brain MRI slices in the Kaggle "lgg-mri-segmentation" layout (Buda et al., TCGA-LGG).

Layout written (as in the public data set)::

    <out>/kaggle_3m/TCGA_<site>_<id>_<yyyymmdd>/TCGA_<site>_<id>_<yyyymmdd>_<n>.tif       # 256x256x3 uint8
    <out>/kaggle_3m/TCGA_<site>_<id>_<yyyymmdd>/TCGA_<site>_<id>_<yyyymmdd>_<n>_mask.tif  # 256x256 uint8 0/255

The three channels are pre-contrast, FLAIR and post-contrast, as in the real files. Each patient has one tumour
(an irregular ellipsoid) spanning a minority of the slices, so most slices have an empty mask as in the real data.

What makes a FLAIR threshold fail, as on real scans (and what the mask does *not* contain):

- **oedema**: a FLAIR-hyperintense, finger-like rim around the tumour, as bright on FLAIR as the tumour or brighter,
  but only slightly dark on pre-contrast T1; the tumour core is clearly T1-hypointense and textured. Not labelled.
- **bright distractors**: scalp fat (bright on every channel, a ring outside the skull), incompletely suppressed
  CSF in the ventricles with periventricular caps in some patients, a few small white-matter hyperintensities.
- **bias field**: a smooth multiplicative field (about +-25 %), shared by the channels, varying per patient.
- **per-patient intensity scales** per channel, and lesions of varied size (small to large) and FLAIR contrast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

TCGA_SITES = ("CS", "DU", "EZ", "FG", "HT")


def patient_folder_name(rng: np.random.Generator, index: int) -> str:
    site = TCGA_SITES[index % len(TCGA_SITES)]
    year, month, day = rng.integers(1995, 2002), rng.integers(1, 13), rng.integers(1, 29)
    return f"TCGA_{site}_{4000 + 37 * index + int(rng.integers(0, 30)):04d}_{year}{month:02d}{day:02d}"


def _smooth_noise(rng, shape, sigma):
    """Gaussian noise low-passed at ``sigma`` voxels, rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / max(float(field.std()), 1e-9)


def _bias_field(rng, x, y, z, strength):
    """exp of a random low-order polynomial: a smooth multiplicative field of about +-``strength``."""
    terms = [x, y, z, x * y, x * x, y * y, x * z]
    field = sum(rng.normal(0.0, 1.0) * t for t in terms)
    field = field / max(float(np.abs(field).max()), 1e-9)
    return np.exp(strength * field)


def _patient_volume(rng: np.random.Generator, num_slices: int, size: int):
    """(S, H, W, 3) uint8 image, (S, H, W) bool tumour mask and (S, H, W) bool oedema for one patient."""
    shape = (num_slices, size, size)
    z, y, x = np.meshgrid(np.linspace(-1, 1, num_slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size),
                          indexing="ij")
    head_r = rng.uniform(0.72, 0.8, size=2)
    head = (x / head_r[0]) ** 2 + (y / head_r[1]) ** 2 + (z / 1.15) ** 2
    brain = head < 1.0
    skull = (head >= 1.0) & (head < 1.1)
    scalp = (head >= 1.1) & (head < 1.3)  # subcutaneous fat: bright on T1 and FLAIR
    white = (_smooth_noise(rng, shape, 6.0) > 0.0) & brain
    vent = ((x / rng.uniform(0.12, 0.2)) ** 2 + ((y + 0.1) / rng.uniform(0.25, 0.4)) ** 2 + (z / 0.5) ** 2 < 1) & brain
    caps = ndimage.binary_dilation(vent, iterations=3) & ~vent & (np.abs(y + 0.1) > 0.15)  # periventricular caps
    wmh = (_smooth_noise(rng, shape, 2.0) > 3.2) & white  # small white-matter hyperintensities

    centre = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(-0.5, 0.5)])
    size_scale = rng.choice([0.5, 0.8, 1.0, 1.3])  # small to large lesions
    radii = size_scale * np.array([rng.uniform(0.1, 0.22), rng.uniform(0.1, 0.22), rng.uniform(0.25, 0.5)])
    dist = np.sqrt(((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                   + ((z - centre[2]) / radii[2]) ** 2)
    tumour = (dist + 0.25 * _smooth_noise(rng, shape, 3.0) < 1.0) & brain
    # oedema: a finger-like rim spreading from the tumour along the white matter
    reach = rng.uniform(0.4, 1.0)
    fingers = _smooth_noise(rng, shape, 4.0)
    oedema = (dist < 1.0 + reach * (1.0 + 0.5 * fingers + 0.5 * white)) & ~tumour & brain
    enhancing = tumour & (dist > 0.6) & (rng.uniform() < 0.5)  # rim enhancement in some patients

    texture = _smooth_noise(rng, shape, 1.5)
    anatomy = _smooth_noise(rng, shape, 2.0)
    csf_flair = rng.uniform(1.1, 1.5) if rng.uniform() < 0.6 else 0.3  # incomplete CSF suppression in many
    tumour_flair = rng.uniform(1.25, 1.7)
    oedema_flair = tumour_flair * rng.uniform(0.95, 1.25)

    def channel(base, wm, csf, cap, wmh_v, oed, tum, tum_tex, skull_v, scalp_v, noise):
        img = np.zeros(shape)
        img[scalp] = scalp_v
        img[skull] = skull_v
        img[brain] = base
        img[white] = wm
        img[wmh] = wmh_v
        img[caps] = cap
        img[vent] = csf
        img[oedema] = oed
        img[tumour] = tum + tum_tex * texture[tumour]
        img += anatomy * 5 * brain + scalp * 12 * anatomy
        return img, noise

    channels = [
        channel(95, 112, 40, 100, 108, 88, 62, 6, 30, 210, 4),                                    # pre-contrast T1
        channel(100, 92, 100 * csf_flair, 100 * csf_flair * 0.95, 140, 100 * oedema_flair,
                100 * tumour_flair, 10, 25, 175, 5),                                              # FLAIR
        channel(95, 115, 40, 100, 110, 90, 68, 6, 30, 215, 4),                                    # post-contrast T1
    ]
    images = []
    bias = _bias_field(rng, x, y, z, rng.uniform(0.15, 0.3))
    for k, (img, noise) in enumerate(channels):
        if k == 2:
            img[enhancing] = 170 + 15 * texture[enhancing]
        img = img * bias * rng.uniform(0.6, 1.15)  # per-patient scale of each channel
        img = img + rng.normal(0, noise, shape) * (head < 1.3)
        images.append(img)
    image = np.clip(np.stack(images, axis=-1), 0, 255).astype(np.uint8)
    return image, tumour, oedema


def lgg_patient(index: int, seed: int = 0, num_slices: int = 20, size: int = 256):
    """Patient ``index``: folder name, image ``(S, H, W, 3)`` uint8, tumour mask (the label) and the unlabelled
    oedema, both ``(S, H, W)`` bool; what `generate_lgg_mri` writes, for tests of the data's properties."""
    rng = np.random.default_rng([seed, index])
    name = patient_folder_name(rng, index)
    n = int(num_slices + rng.integers(-num_slices // 5, num_slices // 5 + 1))
    image, tumour, oedema = _patient_volume(rng, max(n, 4), size)
    return name, image, tumour, oedema


def generate_lgg_mri(out_dir, cases: int = 6, seed: int = 0, num_slices: int = 20, size: int = 256) -> list[Path]:
    """Write ``cases`` synthetic patients; returns the patient folders.

    Args:
        out_dir: ``kaggle_3m/`` is created inside.
        cases: number of patients.
        seed: everything is a deterministic function of the seed and the patient index.
        num_slices: slices per patient (+-20 %, at least 4).
        size: slice height and width.

    Example:
        >>> folders = generate_lgg_mri(tmp_path / "lgg", cases=2, num_slices=8, size=64)
    """
    root = Path(out_dir) / "kaggle_3m"
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    for index in range(cases):
        name, image, tumour, _ = lgg_patient(index, seed=seed, num_slices=num_slices, size=size)
        folder = root / name
        folder.mkdir(exist_ok=True)
        for s in range(image.shape[0]):
            Image.fromarray(image[s]).save(folder / f"{name}_{s + 1}.tif", format="TIFF")
            Image.fromarray((tumour[s] * 255).astype(np.uint8)).save(folder / f"{name}_{s + 1}_mask.tif", format="TIFF")
        folders.append(folder)
    return folders


__all__ = ["generate_lgg_mri", "lgg_patient", "patient_folder_name"]
