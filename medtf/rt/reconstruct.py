"""Reconstruct catheter centrelines (tip first, LPS mm) from a binary catheter mask.

Pipeline (all distances in millimetres, so anisotropic spacing and any image direction are handled):

1. 26-connected components of the mask; the drawn catheter radius is estimated from them unless given
   (`estimate_radius`: predicted or thresholded masks are often fatter than the 1 mm training masks).
2. Per component, slice along the index axis best aligned with its principal direction (PCA of voxel centres)
   and track blob centroids slice by slice (`medtf.rt.skeleton.track_component`): touching/crossing catheters in
   one component are separated by splitting blobs wider than one tube and by direction continuity.
3. Voxels explained by the long tracks are removed and steps 1-2 run once more on what is left (a catheter
   crossing another at a steep angle has its own dominant axis).
4. Pieces of one catheter (gaps in the mask, a catheter cut where another crosses it, the last voxels of a tip)
   are joined end to end when their directions agree (`medtf.rt.skeleton.join_tracks`); pieces that run side by
   side within ``overlap_lateral_mm`` (a catheter split in two where a predicted mask's confidence dips, or a
   duplicate) are merged (`medtf.rt.track_merge`) *before* orienting, so a catheter is oriented as a whole.
5. Tracks are lightly smoothed, those shorter than ``min_length_mm`` dropped, the rest oriented tip first
   (`orient_catheters`) and resampled every ``step_mm``.

Limits: separations below about two slice spacings *along the slicing axis* (3 mm apart across 2 mm slices)
can merge two catheters into one; a catheter that bends by more than ~60 degrees from its component's main
direction (loops, ring applicators) is not supported; a stretch of catheter absent from the mask cannot be
recovered beyond ``max_join_gap_mm``; two catheters within a slice spacing of each other, one continuing the
other past its end with at most ``max_step_overlap_mm`` side by side, are taken for one (a slice step).

Tip versus connector: catheters enter through the skin, so the connector end is the one outside or nearest the
body surface, which on a planning CT is the end nearest the image border (it often leaves the field of view);
the tip is the deeper end. ``connector_side`` (an LPS direction) or ``tip_hint`` (points near the tips, e.g. a
previous plan) override this where the implant geometry is known (prostate: connectors inferior, "I"). A track
with neither end within ``border_mm`` of the border (the deep piece of a catheter whose outer part the mask
missed) follows the insertion direction of the catheters that do reach it (`orient_catheters`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medtf.io.volume import Volume
from medtf.rt.polyline import polyline_length, resample_polyline
from medtf.rt.rasterize import polyline_distance_map
from medtf.rt.skeleton import join_tracks, slice_blobs, smooth_track, track_component
from medtf.rt.track_merge import merge_overlapping_tracks

# A catheter mask covers well under 1% of a planning CT (30 catheters of 2 mm x 20 cm: ~20 mL of several
# litres); a mask above this fraction is no catheter segmentation (an untrained or wrong model), and tracking its
# hundreds of blobs would take minutes to write a plan of hundreds of channels.
MAX_FOREGROUND_FRACTION = 0.05
STUB_MM = 4.0  # pieces shorter than this only extend the end of a longer piece (see join_tracks)
# A track end this close (mm) to the image border is a connector end (orient_catheters). Connectors run to the
# edge of the field of view (a mask may stop a voxel or two short of it); tips stop a few mm inside the skin,
# which on a tight field of view can be under 10 mm from the border, hence not more.
BORDER_MM = 5.0

#: LPS unit directions of the patient sides accepted by ``connector_side``.
SIDES = {"L": (1.0, 0.0, 0.0), "R": (-1.0, 0.0, 0.0), "P": (0.0, 1.0, 0.0), "A": (0.0, -1.0, 0.0),
         "S": (0.0, 0.0, 1.0), "I": (0.0, 0.0, -1.0)}


def _components(mask: np.ndarray, m: np.ndarray, origin: np.ndarray):
    """``(ijk (n, 3) x/y/z indices, pts (n, 3) mm, principal axis)`` per 26-connected component."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        zyx = np.argwhere(labels[box] == k) + np.array([s.start for s in box])
        ijk = zyx[:, ::-1]
        pts = ijk @ m.T + origin
        centred = pts - pts.mean(0)
        axis = np.linalg.svd(centred, full_matrices=False)[2][0] if len(pts) > 1 else np.ones(3) / np.sqrt(3)
        yield ijk, pts, axis


def estimate_radius(mask: np.ndarray, reference: Volume, min_length_mm: float = 10.0,
                    default_mm: float = 1.0) -> float:
    """Typical catheter radius (mm) drawn in ``mask``: median over components at least ``min_length_mm`` long of
    ``sqrt(volume / (pi * length))``, length being the extent along the component's principal axis.

    A mask predicted by a network is often fatter than the 1 mm training masks (or thresholded CT: ~1.5-1.8 mm);
    the blob-splitting test must use the radius actually drawn. Components holding several touching catheters
    inflate their own value, hence the median. Returns ``default_mm`` when no component is long enough.

    Example:
        >>> estimate_radius(ct.array > 400, ct)
        1.64
    """
    m = reference.affine_lps[:3, :3]
    voxel_mm3 = abs(float(np.linalg.det(m)))
    values = []
    for _, pts, axis in _components(np.asarray(mask) > 0, m, np.zeros(3)):
        proj = (pts - pts.mean(0)) @ axis
        length = float(proj.max() - proj.min())
        if length >= min_length_mm:
            values.append(np.sqrt(len(pts) * voxel_mm3 / (np.pi * length)))
    return float(np.median(values)) if values else float(default_mm)


def _track(ijk, pts, axis, m, radius_mm):
    unit = m / np.linalg.norm(m, axis=0)  # physical direction of each index axis
    align = np.abs(axis @ unit)
    k = int(np.argmax(align))
    cos_t = max(float(align[k]), 0.5)
    in_plane = [float(np.linalg.norm(m[:, i])) for i in range(3) if i != k]
    # In a cut at angle theta, one tube's voxel centres lie within r / cos(theta) of its centre, and in practice
    # within that of their centroid (checked on rasterised tubes); a small allowance covers mask noise. Wider
    # blobs hold several catheters.
    limit = radius_mm / cos_t + 0.2 * min(in_plane)
    # Centroids jump by up to about half an in-plane voxel between slices; catheters can be 2 r apart.
    gate = radius_mm + 0.5 * max(in_plane)
    a, b = [unit[:, i] for i in range(3) if i != k]
    normal = np.cross(a, b) / np.linalg.norm(np.cross(a, b))
    return track_component(slice_blobs(ijk, pts, k), normal, limit, gate, claim_mm=0.5 * max(in_plane))


def orient_catheter(points: np.ndarray, reference: Volume, connector_side=None, tip_hint=None) -> np.ndarray:
    """Return ``points`` ordered tip first.

    Args:
        points: ``(N, 3)`` centreline in LPS mm, either order.
        reference: the image grid (used by the default rule).
        connector_side: None (default rule: the connector is the end nearer the image border), an LPS side
            letter (``"L", "R", "A", "P", "S", "I"``: the connector is the end further that way) or a 3-vector.
        tip_hint: ``(M, 3)`` points near catheter tips; the end nearer any of them is the tip (overrides).
    """
    first, last = points[0], points[-1]
    if tip_hint is not None:
        hint = np.asarray(tip_hint, dtype=np.float64).reshape(-1, 3)
        d0, d1 = (np.min(np.linalg.norm(hint - p, axis=1)) for p in (first, last))
        return points[::-1].copy() if d1 < d0 else points
    if connector_side is not None:
        v = np.asarray(SIDES[connector_side.upper()] if isinstance(connector_side, str) else connector_side, float)
        return points[::-1].copy() if (last - first) @ v < 0 else points
    depth = _border_depth(np.stack([first, last]), reference)
    return points[::-1].copy() if depth[0] < depth[1] - 1e-6 else points


def _border_depth(points: np.ndarray, reference: Volume) -> np.ndarray:
    """Distance (mm) from each of ``points`` ``(n, 3)`` to the nearest face of the image box."""
    idx = reference.physical_to_index(points)
    extent = np.asarray(reference.shape_xyz, dtype=np.float64) - 1.0
    return np.min(np.minimum(idx, extent - idx) * np.asarray(reference.spacing), axis=1)


def orient_catheters(tracks: Sequence[np.ndarray], reference: Volume, connector_side=None, tip_hint=None,
                     border_mm: float = BORDER_MM) -> list[np.ndarray]:
    """`orient_catheter` for every track, with one rule for tracks that do not reach the image border.

    With an override (``connector_side``, ``tip_hint``) each track follows it. Otherwise tracks with one end
    within ``border_mm`` of the border and the other at least ``border_mm`` deeper have a clear connector end;
    they vote (weighted by length) for the implant's insertion direction (tip -> connector). A track whose ends
    both lie deeper than ``border_mm`` (a fragment of a catheter whose outer part the mask missed: its nearer
    end may be its tip, close to the opposite skin) is oriented along that direction when the votes agree
    (resultant >= half their weight: the needles of one implant enter from one side), instead of by the
    nearer-border rule, which does not apply to it. Without agreeing votes every track keeps that rule.

    Example:
        >>> tip_first = orient_catheters(centrelines, ct)  # centrelines in LPS mm, either order
    """
    if connector_side is not None or tip_hint is not None:
        return [orient_catheter(t, reference, connector_side, tip_hint) for t in tracks]
    oriented = [orient_catheter(t, reference) for t in tracks]
    depths = [_border_depth(t[[0, -1]], reference) for t in oriented]  # (tip, connector)
    vote, weight = np.zeros(3), 0.0
    for t, (d_tip, d_conn) in zip(oriented, depths):
        chord = t[-1] - t[0]
        length = float(np.linalg.norm(chord))
        if d_conn <= border_mm and d_tip - d_conn >= border_mm and length > 0:  # a clear connector end
            vote += chord  # unit direction x length
            weight += length
    if weight == 0.0 or np.linalg.norm(vote) < 0.5 * weight:
        return oriented
    return [t[::-1].copy() if min(d) > border_mm and (t[-1] - t[0]) @ vote < 0 else t
            for t, d in zip(oriented, depths)]


class ImplausibleMaskError(ValueError):
    """The mask cannot be a catheter segmentation (see ``max_foreground_fraction``)."""


def reconstruct_catheters(
    mask: np.ndarray,
    reference: Volume,
    *,
    step_mm: float = 1.0,
    min_length_mm: float = 10.0,
    radius_mm: float | None = None,
    connector_side: str | Sequence[float] | None = None,
    tip_hint: np.ndarray | Sequence[Sequence[float]] | None = None,
    max_join_gap_mm: float = 15.0,
    overlap_lateral_mm: float | None = None,
    max_step_overlap_mm: float = 12.0,
    border_mm: float = BORDER_MM,
    max_foreground_fraction: float = MAX_FOREGROUND_FRACTION,
) -> list[np.ndarray]:
    """One ordered centreline per catheter found in a binary mask.

    Args:
        mask: ``(z, y, x)`` (or ``(z, y, x, 1)``) bool/uint8 on ``reference``'s grid.
        reference: the image the mask was predicted on (spacing, origin, direction).
        step_mm: output point spacing along the arc (the connector end is cut to a whole number of steps).
        min_length_mm: shorter tracks (specks, stubs of spurious splits) are dropped.
        radius_mm: catheter radius as drawn in the mask (the training masks use 1.0 mm); blobs wider than one
            tube of this radius are split into several catheters. None estimates it from the mask
            (`estimate_radius`), which suits predicted masks of unknown thickness; pass it when the mask holds
            no isolated catheter (every component several touching ones).
        connector_side, tip_hint: orientation overrides, see `orient_catheter`.
        max_join_gap_mm: pieces whose facing ends are this close and aligned (within 30 degrees) are joined
            into one catheter (gaps in a predicted mask; a catheter cut where another one crosses it).
        overlap_lateral_mm: tracks that run side by side over >= 3 mm within this distance (and within 30
            degrees) are one catheter split where the mask's confidence dips, or a duplicate
            (`medtf.rt.track_merge`); None: ``radius_mm``, below the spacing of two real catheters.
        max_step_overlap_mm: pieces up to a slice spacing (+ half an in-plane voxel) apart are merged too when
            one continues the other past its end and they overlap by at most this (a catheter passing from one
            slice to the next); longer side-by-side runs are neighbouring catheters.
        border_mm: a track end this close to the image border is a connector end; tracks with both ends deeper
            follow the other catheters' insertion direction (`orient_catheters`).
        max_foreground_fraction: a mask covering more of the image is refused with `ImplausibleMaskError`
            (catheters fill well under 1% of a CT; 1.0 turns the check off).

    Returns:
        ``(N, 3)`` float64 LPS mm arrays, tip (distal end) first, ``step_mm`` apart; sorted by tip position
        (z, y, x) so the order is deterministic.

    Example:
        >>> ct = read_dicom_series(ct_dir)
        >>> catheters = reconstruct_catheters(predicted_mask, ct, step_mm=2.5)
    """
    mask = np.asarray(mask)
    if mask.ndim == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.shape != tuple(reference.array.shape[:3]):
        raise ValueError(f"mask shape {mask.shape} does not match the reference grid {reference.array.shape[:3]}")
    fraction = float(np.count_nonzero(mask)) / max(1, mask.size)
    if fraction > max_foreground_fraction:
        raise ImplausibleMaskError(
            f"the mask covers {100 * fraction:.1f}% of the image; catheters cover well under 1% of a CT, so this "
            f"is not a catheter segmentation (an untrained model, or a model for other data?): nothing "
            f"reconstructed (max_foreground_fraction={max_foreground_fraction})")
    affine = reference.affine_lps
    m, origin = affine[:3, :3], affine[:3, 3]
    half_diag = 0.5 * float(np.linalg.norm(reference.spacing))
    if radius_mm is None:
        radius_mm = estimate_radius(mask, reference, min_length_mm)
    residual = mask > 0
    tracks: list[np.ndarray] = []
    # Pieces shorter than min_length_mm are kept until joining: a thin tube on 2 mm slices breaks into pieces.
    # In the first pass, short tracks of a component that also holds a long one are by-products of a catheter
    # crossing the slices steeply; they are dropped and their voxels tracked again, on their own axis, in pass 2.
    long_mm = 0.5 * min_length_mm
    for first in (True, False):
        found, kept = [], []
        for comp in _components(residual, m, origin):
            comp_tracks = _track(*comp, m, radius_mm)
            comp_long = [t for t in comp_tracks if polyline_length(t) >= long_mm]
            kept += comp_long
            found += comp_long if (first and comp_long) else comp_tracks
        tracks += found
        if not kept:
            break
        dist, _ = polyline_distance_map(kept, reference, radius_mm + half_diag)
        residual &= ~np.isfinite(dist)
    stub_mm = min(min_length_mm, STUB_MM)
    tracks = join_tracks(tracks, max_gap_mm=max_join_gap_mm, lateral_mm=radius_mm + half_diag, stub_mm=stub_mm)
    # Pieces of one catheter that overlap (a confidence dip) are merged before orienting, then joined again:
    # a merged piece may now meet another end to end. A catheter passing from one slice to the next can leave
    # a piece on each, a slice spacing apart.
    n_before = len(tracks)
    spacing = np.asarray(reference.spacing, dtype=np.float64)
    tracks = merge_overlapping_tracks(
        tracks, radius_mm if overlap_lateral_mm is None else overlap_lateral_mm,
        step_lateral_mm=max(radius_mm, float(spacing.max())) + 0.5 * float(spacing.min()),
        max_step_overlap_mm=max_step_overlap_mm)
    if len(tracks) < n_before:
        tracks = join_tracks(tracks, max_gap_mm=max_join_gap_mm, lateral_mm=radius_mm + half_diag,
                             stub_mm=stub_mm)
    tracks = [t for t in (smooth_track(t) for t in tracks) if polyline_length(t) >= min_length_mm]
    tracks = orient_catheters(tracks, reference, connector_side, tip_hint, border_mm)
    out = [resample_polyline(t, step_mm, include_end=False) for t in tracks]
    return sorted(out, key=lambda c: tuple(np.round(c[0][::-1], 3)))


__all__ = ["SIDES", "estimate_radius", "orient_catheter", "orient_catheters", "reconstruct_catheters"]
