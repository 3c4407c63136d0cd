"""Centreline tracking helpers for `medtf.rt.reconstruct` (a slice-wise "skeleton" of thin tubular masks).

A catheter mask is a union of tubes of (roughly) known radius. Cut by planes perpendicular to a tube's dominant
index axis, each tube leaves a small blob whose centroid is a centreline point. Blobs of touching catheters are
split by k-means with the smallest ``k`` whose clusters all fit a single tube cross-section (`split_blob`), and
the per-slice points are linked into curves by predicting each track one slice ahead (constant velocity) and
assigning by the Hungarian algorithm (`track_component`). Where two tracks run into one blob (a crossing or a
touch), the blob is re-split around their predictions, or shared when it is only one tube wide, so the tracks
keep their own direction through the junction (direction continuity instead of skeleton-junction pairing).
Everything is measured in millimetres, so anisotropic spacing and oblique directions need no special cases.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

STUB_CONE_TAN = float(np.tan(np.radians(10.0)))
MAX_BLOB_SPLIT = 6  # more catheters than this in one cross-section blob is treated as a mask artefact


def kmeans(points: np.ndarray, init: np.ndarray, iters: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd iterations from ``init`` ``(k, 3)``; returns ``(centres, labels)`` (empty clusters keep their seed)."""
    centres = np.array(init, dtype=np.float64)
    labels = np.zeros(len(points), np.int64)
    for _ in range(iters):
        labels = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        new = np.array([points[labels == j].mean(0) if np.any(labels == j) else centres[j]
                        for j in range(len(centres))])
        if np.allclose(new, centres, atol=1e-6):
            break
        centres = new
    return centres, labels


def _farthest_seeds(points: np.ndarray, k: int) -> np.ndarray:
    seeds = [points[np.argmax(((points - points.mean(0)) ** 2).sum(-1))]]
    for _ in range(k - 1):
        d = np.min(((points[:, None] - np.array(seeds)[None]) ** 2).sum(-1), axis=1)
        seeds.append(points[np.argmax(d)])
    return np.array(seeds)


def _max_spread(points: np.ndarray, centres: np.ndarray, labels: np.ndarray) -> float:
    return float(np.sqrt(((points - centres[labels]) ** 2).sum(-1).max()))


def split_blob(points: np.ndarray, limit_mm: float) -> np.ndarray:
    """Centres ``(k, 3)`` of the fewest clusters whose voxels all lie within ``limit_mm`` of their centre."""
    centres, labels = points.mean(0, keepdims=True), np.zeros(len(points), np.int64)
    k = 1
    while _max_spread(points, centres, labels) > limit_mm and k < min(len(points), MAX_BLOB_SPLIT):
        k += 1
        centres, labels = kmeans(points, _farthest_seeds(points, k))
    return centres


def slice_blobs(ijk: np.ndarray, pts: np.ndarray, axis: int) -> dict[int, list[np.ndarray]]:
    """``{slice index: [blob points (n, 3) mm, ...]}``: 8-connected in-plane pieces of the voxels on each slice."""
    a, b = [i for i in range(3) if i != axis]
    out: dict[int, list[np.ndarray]] = {}
    for s in np.unique(ijk[:, axis]):
        sel = np.flatnonzero(ijk[:, axis] == s)
        u, v = ijk[sel, a], ijk[sel, b]
        grid = np.zeros((u.max() - u.min() + 1, v.max() - v.min() + 1), bool)
        grid[u - u.min(), v - v.min()] = True
        lab, _ = ndimage.label(grid, structure=np.ones((3, 3)))
        ids = lab[u - u.min(), v - v.min()]
        out[int(s)] = [pts[sel[ids == i]] for i in np.unique(ids)]
    return out


def _predict(track: list, s: int) -> np.ndarray:
    """Constant-velocity prediction of ``track`` (list of ``(slice, point, own)``) at slice ``s``.

    Only the track's *own* points (not shared with or re-split from another track at a crossing) set the
    velocity, so two crossing tracks keep their incoming directions through the junction.
    """
    own = [(si, p) for si, p, o in track if o] or [(si, p) for si, p, _ in track]
    s1, p1 = own[-1]
    if len(own) == 1:
        return track[-1][1]
    s0, p0 = own[max(0, len(own) - 4)]  # velocity over up to 3 steps damps the centroid jitter
    return p1 + (p1 - p0) * (s - s1) / (s1 - s0)


def _plane_dist(points: np.ndarray, p: np.ndarray, normal: np.ndarray) -> float:
    d = points - p
    d -= (d @ normal)[:, None] * normal
    return float(np.min(np.linalg.norm(d, axis=1)))


def track_component(blobs: dict[int, list[np.ndarray]], normal: np.ndarray, limit_mm: float, gate_mm: float,
                    claim_mm: float, max_gap: int = 1) -> list[np.ndarray]:
    """Link per-slice blob centres into ordered centreline tracks ``(n, 3)`` (slice order).

    Args:
        blobs: `slice_blobs` output.
        normal: unit normal of the slice planes; track-to-detection distances are measured in the plane.
        limit_mm: a blob whose voxels all lie within this of its centroid is one tube wide (`split_blob`).
        gate_mm: a track takes a detection at most this far from its prediction (keep it below the closest
            catheter spacing, or a track that ends jumps onto its neighbour).
        claim_mm: an unmatched track whose prediction is within this of a blob's voxels runs through that blob
            together with another track (crossing/touch).
        max_gap: slices a track may miss before it ends.
    """
    tracks: list[list] = []
    for s in sorted(blobs):
        live = [t for t in tracks if s - t[-1][0] <= max_gap + 1]
        dets, owner = [], []
        for bi, blob in enumerate(blobs[s]):
            for c in split_blob(blob, limit_mm):
                dets.append(c)
                owner.append(bi)
        dets = np.array(dets)
        preds = np.array([_predict(t, s) for t in live]).reshape(-1, 3)
        got: dict[int, int] = {}
        if len(live):
            diff = preds[:, None] - dets[None]
            diff -= (diff @ normal)[..., None] * normal  # in-plane: a new track's prediction is a slice behind
            cost = np.linalg.norm(diff, axis=-1)
            rows, cols = linear_sum_assignment(cost)
            got = {r: c for r, c in zip(rows, cols) if cost[r, c] <= gate_mm}
        # Tracks left over whose prediction lies on a blob already taken: a crossing/touch (two tubes, one blob).
        claims: dict[int, list[int]] = {}
        for ti in range(len(live)):
            if ti in got:
                continue
            near = [bi for bi, blob in enumerate(blobs[s]) if _plane_dist(blob, preds[ti], normal) <= claim_mm]
            if near:
                claims.setdefault(near[0], []).append(ti)
        points: dict[int, tuple] = {ti: (dets[c], True) for ti, c in got.items()}
        for bi, extra in claims.items():
            members = [ti for ti, c in got.items() if owner[c] == bi] + extra
            blob = blobs[s][bi]
            centroid = blob.mean(0)
            if len(blob) < len(members) or _max_spread(blob, centroid[None], np.zeros(len(blob), int)) <= limit_mm:
                for ti in members:  # one tube wide: the tracks really cross here and share the point
                    points[ti] = (centroid, False)
            else:
                centres, _ = kmeans(blob, preds[members])
                for ti, c in zip(members, centres):
                    points[ti] = (c, False)
        for ti, (p, own) in points.items():
            live[ti].append((s, p, own))
        used = set(got.values()) | {c for c in range(len(dets)) if owner[c] in claims}
        tracks.extend([(s, dets[c], True)] for c in range(len(dets)) if c not in used)
    return [np.array([p for _, p, _ in t]) for t in tracks]


def smooth_track(points: np.ndarray, passes: int = 2) -> np.ndarray:
    """Binomial ``[1, 2, 1] / 4`` smoothing of the interior points (ends kept): removes voxel-centroid jitter."""
    out = np.array(points, dtype=np.float64)
    for _ in range(passes):
        if len(out) < 3:
            break
        out[1:-1] = 0.25 * out[:-2] + 0.5 * out[1:-1] + 0.25 * out[2:]
    return out


def _length(t: np.ndarray) -> float:
    return float(np.linalg.norm(np.diff(t, axis=0), axis=1).sum())


def join_tracks(tracks: list[np.ndarray], max_gap_mm: float, lateral_mm: float, stub_mm: float,
                max_angle_deg: float = 30.0) -> list[np.ndarray]:
    """Join pieces of one catheter: facing ends within ``max_gap_mm`` whose tangents agree.

    Pieces arise where a mask has a gap (a thin tube rasterised on 2 mm slices has some; predicted masks more),
    or where a crossing catheter was cut in two. The ends must point at each other (tangents within
    ``max_angle_deg`` of anti-parallel) and each end must lie within ``lateral_mm`` (plus the angular cone) of
    the other's tangent line; they may overlap by up to ``2 * lateral_mm`` (overlapping points are dropped). Greedy,
    closest pair first, until no pair qualifies. Then stubs (pieces shorter than ``stub_mm``, too short for a
    tangent, e.g. the last voxel or two of a tip) are appended to an end when they lie within ``max_gap_mm`` in
    front of it, inside a narrow cone (``lateral_mm`` + 10 degrees) around its tangent; stubs are never joined to
    each other.
    """
    all_tracks = [np.asarray(t, dtype=np.float64) for t in tracks]
    stubs = [t for t in all_tracks if len(t) < 2 or _length(t) < stub_mm]
    tracks = [t for t in all_tracks if not (len(t) < 2 or _length(t) < stub_mm)]
    cos_max, tan_max = np.cos(np.radians(max_angle_deg)), np.tan(np.radians(max_angle_deg))

    def tangent_out(t, end):  # unit direction leaving the track through ``end`` (0: first point, 1: last)
        pts = t if end else t[::-1]
        d = pts[-1] - pts[max(0, len(pts) - 6)]
        n = np.linalg.norm(d)
        return d / n if n > 0 else None

    def fits(v, t, tan=tan_max):  # does the offset v (from an end) lie in front of that end, near its tangent?
        along = float(v @ t)
        perp = float(np.linalg.norm(v - along * t))
        return along >= -2.0 * lateral_mm and perp <= lateral_mm + tan * max(along, 0.0)

    ids = list(range(len(tracks)))  # stable identities: a joined track gets a new one
    rejected: set = set()  # (id, end, id, end) pairs already found not joinable; they stay so until one changes
    while True:
        best = _closest_joinable_pair(tracks, ids, rejected, max_gap_mm, cos_max, tangent_out, fits)
        if best is None:
            return _attach_stubs(tracks, stubs, max_gap_mm, lambda v, t: fits(v, t, STUB_CONE_TAN), tangent_out)
        _, i, j, ei, ej, ti = best
        a = tracks[i] if ei else tracks[i][::-1]
        b = tracks[j][::-1] if ej else tracks[j]
        ahead = (b - a[-1]) @ ti > 0  # drop the overlap: points of b behind a's end
        b = b[ahead] if ahead.any() else b[-1:]
        keep = [k for k in range(len(tracks)) if k not in (i, j)]
        new_id = max(ids) + 1
        tracks = [tracks[k] for k in keep] + [np.concatenate([a, b])]
        ids = [ids[k] for k in keep] + [new_id]


def _closest_joinable_pair(tracks, ids, rejected, max_gap_mm, cos_max, tangent_out, fits):
    """``(gap, i, j, end_i, end_j, tangent_i)`` of the closest pair of track ends that may be joined, or None.

    Candidate end pairs come from a k-d tree (ends within ``max_gap_mm``) and each pair is tested once (``rejected``
    remembers failures by track identity), so a noisy mask with thousands of fragments stays fast.
    """
    from scipy.spatial import cKDTree

    if len(tracks) < 2:
        return None
    ends = np.array([t[-1 if e else 0] for t in tracks for e in (0, 1)])
    pairs = cKDTree(ends).query_pairs(max_gap_mm, output_type="ndarray")
    if not len(pairs):
        return None
    pairs = pairs[pairs[:, 0] // 2 != pairs[:, 1] // 2]  # two ends of one track are not a join
    gaps = np.linalg.norm(ends[pairs[:, 1]] - ends[pairs[:, 0]], axis=1)
    for k in np.argsort(gaps, kind="stable"):
        (i, ei), (j, ej) = divmod(int(pairs[k, 0]), 2), divmod(int(pairs[k, 1]), 2)
        key = (ids[i], ei, ids[j], ej)
        if key in rejected:
            continue
        ti, tj = tangent_out(tracks[i], ei), tangent_out(tracks[j], ej)
        pi, pj = ends[2 * i + ei], ends[2 * j + ej]
        if ti is not None and tj is not None and -ti @ tj >= cos_max and fits(pj - pi, ti) and fits(pi - pj, tj):
            return float(gaps[k]), i, j, ei, ej, ti
        rejected.add(key)
    return None


def _attach_stubs(tracks, stubs, reach_mm, fits, tangent_out):
    """Append each stub to the track end it lies in front of (closest first); unattached stubs are returned too.

    Passes over the stubs, closest to a track end first; candidate ends come from a k-d tree rebuilt after every
    pass (a track extended in a pass is re-checked in the next), so the speckle of a poor prediction costs
    O(n log n) per pass rather than O(n^2) comparisons.
    """
    from scipy.spatial import cKDTree

    tracks, left = list(tracks), list(stubs)
    while tracks and left:
        tree = cKDTree(np.array([t[-1 if e else 0] for t in tracks for e in (0, 1)]))
        nearest = [float(tree.query(stub)[0].min()) for stub in left]
        attached, keep = 0, []
        for si in np.argsort(nearest, kind="stable"):
            stub = left[si]
            if nearest[si] > reach_mm:
                keep.append(stub)
                continue
            candidates = sorted({k // 2 for hits in tree.query_ball_point(stub, reach_mm) for k in hits})
            best = None
            for ti in candidates:
                t = tracks[ti]
                for end in (0, 1):
                    p, tan = t[-1 if end else 0], tangent_out(t, end)
                    gap = float(np.min(np.linalg.norm(stub - p, axis=1)))
                    if tan is None or gap > reach_mm or (best is not None and gap >= best[0]):
                        continue
                    if all(fits(q - p, tan) for q in stub) and np.max((stub - p) @ tan) > 0:
                        best = (gap, ti, end, tan)
            if best is None:
                keep.append(stub)
                continue
            _, ti, end, tan = best
            t = tracks[ti] if end else tracks[ti][::-1]
            along = (stub - t[-1]) @ tan
            ext = stub[along > 0][np.argsort(along[along > 0])]
            tracks[ti] = np.concatenate([t, ext]) if end else np.concatenate([t, ext])[::-1]
            attached += 1
        left = keep
        if not attached:
            break
    return tracks + left
