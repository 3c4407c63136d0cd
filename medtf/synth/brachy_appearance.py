"""How the synthetic brachy CT looks: plastic catheters with partial volume, dummy wires, clips, calcifications,
metal streaks and noise (helpers of `medtf.synth.brachy_ct`).

Real breast HDR planning CTs (2-3 mm slices) show the plastic catheters as a faint ring (wall +100..+200 HU) around an
air lumen (-1000 HU), both smaller than a voxel, so the tube appears as a partial-volumed dark dot with a slightly
brighter rim. Radio-opaque dummy wires sit in some catheters only (bright, with blooming); surgical clips and
calcifications are bright but are not catheters; metal throws a few bright/dark streaks across the axial slice.
A plain HU threshold therefore finds the wires, clips, calcifications and streaks, not the catheters.

Partial volume is computed by supersampling: the fraction of each voxel within a tube radius of a polyline is the
mean, over ``sub = (sx, sy, sz)`` sub-voxel positions, of whether that position is inside.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from medtf.io.volume import Volume
from medtf.rt.rasterize import polyline_distance_map

AIR_HU = -1000.0
WALL_HU = (100.0, 200.0)        # catheter plastic, drawn per patient
WIRE_HU = (2500.0, 4000.0)      # dummy-wire steel, drawn per catheter (voxels reach ~+1000..3000 HU after mixing)
CLIP_HU = (2000.0, 3000.0)
CALC_HU = (300.0, 1200.0)       # peak of a calcification before partial volume
OUTER_RADIUS_MM = 1.0           # 2 mm outer diameter (6F-ish plastic catheter)
LUMEN_RADIUS_MM = 0.55
WIRE_RADIUS_MM = 0.7            # steel core plus blooming (wider than the lumen, as metal looks in CT)
NOISE_HU = (20.0, 40.0)         # per patient
PSF_SIGMA_MM = 0.45             # reconstruction kernel blur (in-plane)
SUBSAMPLES = (3, 3, 5)          # sub-voxel positions (x, y, z) for partial volume at (1, 1, 2) mm voxels


@dataclasses.dataclass(frozen=True)
class Appearance:
    """Per-patient draws: noise level, wall HU, which catheters carry a dummy wire, and the distractors."""

    noise_hu: float
    wall_hu: float
    wired: tuple[bool, ...]
    wire_hu: tuple[float, ...]


def tube_fraction(lines, volume: Volume, radius_mm: float, sub=SUBSAMPLES) -> np.ndarray:
    """Fraction ``(z, y, x)`` of each voxel within ``radius_mm`` of any polyline (supersampled partial volume)."""
    shape = volume.array.shape[:3]
    if not lines:
        return np.zeros(shape, np.float32)
    acc = np.zeros(shape, np.float32)
    spacing = np.asarray(volume.spacing, float)
    offsets = [(np.arange(n) + 0.5) / n - 0.5 for n in sub]
    for ox in offsets[0]:
        for oy in offsets[1]:
            for oz in offsets[2]:
                shifted = Volume(volume.array, spacing=volume.spacing,
                                 origin=tuple(np.asarray(volume.origin) + np.array([ox, oy, oz]) * spacing))
                dist, _ = polyline_distance_map(lines, shifted, radius_mm)
                acc += dist <= radius_mm
    return acc / float(np.prod(sub))


def draw_appearance(rng: np.random.Generator, n_catheters: int) -> Appearance:
    wired = rng.random(n_catheters) < rng.uniform(0.15, 0.4)  # dummy wires in some catheters only
    return Appearance(
        noise_hu=float(rng.uniform(*NOISE_HU)), wall_hu=float(rng.uniform(*WALL_HU)),
        wired=tuple(bool(w) for w in wired), wire_hu=tuple(float(h) for h in rng.uniform(*WIRE_HU, n_catheters)))


def draw_catheters(hu: np.ndarray, lines, volume: Volume, look: Appearance) -> np.ndarray:
    """Tissue HU map with plastic tubes (wall, air lumen, dummy wire where drawn) mixed in by partial volume."""
    outer = tube_fraction(lines, volume, OUTER_RADIUS_MM)
    lumen = tube_fraction(lines, volume, LUMEN_RADIUS_MM)
    hu = hu * (1.0 - outer) + (outer - lumen) * look.wall_hu + lumen * AIR_HU
    for line, wired, value in zip(lines, look.wired, look.wire_hu):
        if wired:  # the wire (with its blooming) replaces lumen, wall and tissue where it reaches
            f = tube_fraction([line], volume, WIRE_RADIUS_MM)
            hu = hu * (1.0 - f) + f * value
    return hu


def _random_point_in(rng, mask: np.ndarray) -> np.ndarray | None:
    idx = np.argwhere(mask)
    return None if len(idx) == 0 else idx[rng.integers(len(idx))]


def add_distractors(rng: np.random.Generator, hu: np.ndarray, volume: Volume, breast: np.ndarray,
                    catheter_dist: np.ndarray) -> tuple[np.ndarray, dict]:
    """Surgical clips (with metal streaks) and calcifications in the breast, at least 4 mm from every catheter."""
    nz, ny, nx = hu.shape
    sx, sy, sz = volume.spacing
    allowed = breast & ~(catheter_dist < 4.0)
    allowed = ndimage.binary_erosion(allowed, iterations=2)
    info = {"clips": 0, "calcifications": 0, "streaks": 0}
    # calcifications: small Gaussian blobs (0.4-1 mm), several per patient
    calc = np.zeros(hu.shape, np.float32)
    for _ in range(int(rng.integers(6, 20))):
        p = _random_point_in(rng, allowed)
        if p is None:
            break
        sigma = rng.uniform(0.4, 1.0)
        box = np.zeros(hu.shape, np.float32)
        box[tuple(p)] = 1.0
        blob = ndimage.gaussian_filter(box, (sigma / sz, sigma / sy, sigma / sx))
        calc = np.maximum(calc, rng.uniform(*CALC_HU) * blob / blob.max())
        info["calcifications"] += 1
    hu = hu + calc
    # clips: short metal segments (3-6 mm) with partial volume, and streaks in their axial slices
    origin = np.asarray(volume.origin, float)
    clip_lines = []
    for _ in range(int(rng.integers(2, 6))):
        p = _random_point_in(rng, allowed)
        if p is None:
            break
        centre = origin + p[::-1] * np.array([sx, sy, sz])
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        half = rng.uniform(1.5, 3.0) * direction
        clip_lines.append((np.stack([centre - half, centre + half]), p))
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    for line, p in clip_lines:
        frac = tube_fraction([line], volume, rng.uniform(0.35, 0.6))
        hu = hu * (1.0 - frac) + frac * rng.uniform(*CLIP_HU)
        info["clips"] += 1
        zs = sorted({int(p[0]) + dz for dz in (-1, 0, 1) if 0 <= int(p[0]) + dz < nz})
        for theta in rng.uniform(0.0, np.pi, int(rng.integers(2, 5))):
            d = (xx - p[2]) * np.sin(theta) - (yy - p[1]) * np.cos(theta)
            t = np.abs((xx - p[2]) * np.cos(theta) + (yy - p[1]) * np.sin(theta))
            amplitude = rng.uniform(150.0, 450.0) * (1 if rng.random() < 0.5 else -1)
            streak = amplitude * np.exp(-d ** 2 / (2 * 0.6 ** 2)) * np.exp(-t * sx / rng.uniform(15.0, 40.0))
            for z in zs:
                hu[z] += streak * (1.0 if z == p[0] else 0.5)
            info["streaks"] += 1
    return hu, info


def finish(rng: np.random.Generator, hu: np.ndarray, volume: Volume, look: Appearance) -> np.ndarray:
    """Reconstruction blur (in-plane PSF) and quantum noise of ``look.noise_hu`` (slightly correlated)."""
    sx, sy, _ = volume.spacing
    hu = ndimage.gaussian_filter(hu, (0.0, PSF_SIGMA_MM / sy, PSF_SIGMA_MM / sx))
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape).astype(np.float32), (0.0, 0.5, 0.5))
    noise *= look.noise_hu / max(float(noise.std()), 1e-6)
    return hu + noise


__all__ = ["Appearance", "add_distractors", "draw_appearance", "draw_catheters", "finish", "tube_fraction"]
