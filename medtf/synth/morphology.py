"""Lesion margins and internal texture shared by the synthetic prostate, brain and lung generators.

One cue family across organs, as in radiology: a malignant / clinically significant lesion has an irregular margin
(spicules: thin, sharp projections; lobulation: broad bulges) and a heterogeneous interior; a benign / insignificant
one is a smooth round or ellipsoid blob with a homogeneous interior. The prostate, brain and lung generators
(`medtf.synth.prostate_mpmri`, `medtf.synth.image_folders`, `medtf.synth.lung_nodules`) draw their lesions' margins
from `lesion_margin` and their texture amplitude from `texture_amplitude`, so that features learned on the brain
and lung sets (edges, spikes, blotchy interiors) are the ones the prostate task needs: the transfer-learning chain
(`experiments/prostate_tl_chain.yaml`) then has something real to transfer.

A margin is a radius multiplier ``m(u) >= 1`` of the direction ``u`` (a unit vector from the lesion centre): a
point ``p`` lies inside when ``|p - c| / r < m(u)``. Spicules point mostly within the image plane (a small out of
plane component), so that a 2D crop through the centre shows them.

Example:
    >>> rng = np.random.default_rng(0)
    >>> margin = lesion_margin(rng, malignant=True, dims=2)
    >>> m = margin(np.array([[1.0, 0.0], [0.0, 1.0]]))   # radius multipliers in two directions
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Relative amplitude of internal texture (multiplicative on the lesion's contrast): heterogeneous vs homogeneous.
TEXTURE = {True: (0.22, 0.38), False: (0.0, 0.04)}


@dataclasses.dataclass(frozen=True)
class Margin:
    """Radius multiplier ``1 + sum_k a_k * max(0, u . d_k) ** n_k`` over spicules and lobes (see module doc)."""

    directions: np.ndarray  # (K, dims) unit vectors
    amplitudes: np.ndarray  # (K,) relative extra radius along each direction
    sharpness: np.ndarray  # (K,) cosine power: high = thin spicule, low = broad lobe

    def __call__(self, u: np.ndarray) -> np.ndarray:
        """Multiplier for unit vectors ``u`` of shape ``(..., dims)``; 1 everywhere for a smooth margin."""
        if not len(self.amplitudes):
            return np.ones(u.shape[:-1])
        cos = np.maximum(u @ self.directions.T, 0.0)  # (..., K)
        return 1.0 + (cos ** self.sharpness * self.amplitudes).sum(axis=-1)


def _directions(rng: np.random.Generator, k: int, dims: int) -> np.ndarray:
    angle = rng.uniform(0, 2 * np.pi, k)
    d = np.stack([np.cos(angle), np.sin(angle)] + ([0.25 * rng.normal(size=k)] if dims == 3 else []), axis=1)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def lesion_margin(rng: np.random.Generator, malignant: bool, dims: int = 3, symmetric: bool = False) -> Margin:
    """A spiculated and lobulated margin (``malignant``) or a smooth one (ellipsoid stays ellipsoid).

    Malignant: 5-9 spicules reaching 0.7-1.4 radii beyond the core (cosine power 30-60: half width 9-12 degrees)
    and 2-4 lobes of 0.15-0.35 radii. Benign: no spicule and no lobe (the generator's ellipsoid radii and a faint
    smooth perturbation give the per-case shape). Directions lie within about 15 degrees of the x/y plane.
    ``symmetric`` pairs every spicule and lobe with its opposite (3-5 pairs), so the lesion's centroid stays its
    centre (the LUNGx CSV gives the nodule's centroid).
    """
    if not malignant:
        return Margin(np.zeros((0, dims)), np.zeros(0), np.zeros(0))
    spicules, lobes = (int(rng.integers(3, 6)), int(rng.integers(1, 3))) if symmetric else \
        (int(rng.integers(5, 10)), int(rng.integers(2, 5)))
    directions = np.concatenate([_directions(rng, spicules, dims), _directions(rng, lobes, dims)])
    amplitudes = np.concatenate([rng.uniform(0.7, 1.4, spicules), rng.uniform(0.15, 0.35, lobes)])
    sharpness = np.concatenate([rng.uniform(30, 60, spicules), rng.uniform(2, 4, lobes)])
    if symmetric:
        directions, amplitudes, sharpness = (np.concatenate([directions, -directions]),
                                             np.tile(amplitudes, 2), np.tile(sharpness, 2))
    return Margin(directions, amplitudes, sharpness)


def texture_amplitude(rng: np.random.Generator, malignant: bool) -> float:
    """Internal texture amplitude: heterogeneous (`TEXTURE` [True]) or nearly homogeneous."""
    low, high = TEXTURE[bool(malignant)]
    return float(rng.uniform(low, high))


def unit(v: np.ndarray) -> np.ndarray:
    """``v / |v|`` along the last axis (the centre itself maps to the x direction, not NaN)."""
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    safe = np.where(n > 1e-9, n, 1.0)
    out = v / safe
    out[..., 0] = np.where(n[..., 0] > 1e-9, out[..., 0], 1.0)
    return out


__all__ = ["Margin", "TEXTURE", "lesion_margin", "texture_amplitude", "unit"]
