"""Merge tracks that run along one catheter side by side (overlapping pieces and duplicates), in millimetres.

`medtf.rt.skeleton.join_tracks` joins pieces of a catheter that meet end to end. A predicted mask whose
confidence dips along a catheter (a thin neck, a blob split in two, voxels left for the second tracking pass)
can instead give two tracks that *overlap* over some length, or a short duplicate lying inside a longer track's
tube. Oriented separately, one of them is spurious and the other may be reversed: a fragment that does not reach
the image border cannot use the "connector = end nearer the border" rule (issue #13: a 56 mm tip error).

Two tracks are one catheter here when, over an overlap of at least ``min_overlap_mm`` of the shorter one,

* its points lie within ``lateral_mm`` of the longer one's polyline (keep this below the closest spacing of two
  real catheters: the default in `medtf.rt.reconstruct` is the drawn catheter radius, ~1-1.5 mm, while catheters
  lie >= ~3 mm apart), and
* their directions agree within ``max_angle_deg`` there, and
* every point of the shorter track clearly *off* the longer one (beyond ``2 * lateral_mm``: track ends fray)
  lies past one of the longer one's ends (within ``end_slack_mm`` of it along the arc): a catheter that crosses
  or touches another leaves it sideways, a piece of the same catheter only past its ends.

The merged track is the longer one extended by the points of the shorter one beyond its ends.

A second, looser distance ``step_lateral_mm`` covers a catheter passing from one slice to the next: a predicted
mask can hold a piece on each slice, one slice spacing apart, that overlap over a few mm where the blob holding
both is split in two. Such pieces are merged only when the overlap is at most ``max_step_overlap_mm`` and the
shorter piece extends the longer one past its end; two catheters that close over a longer run, or a shorter
one lying alongside a longer one, stay apart.
"""

from __future__ import annotations

import heapq

import numpy as np

from medtf.rt.polyline import polyline_length, resample_polyline


def project_onto_polyline(points: np.ndarray, line: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(distance_mm, arc_mm)`` of each of ``points`` ``(N, 3)`` to its nearest point on ``line`` ``(M, 3)``.

    ``arc_mm`` is the arc length of that nearest point from ``line[0]`` (0 or the full length past the ends).

    Example:
        >>> project_onto_polyline(np.array([[3.0, 1, 0], [-2.0, 0, 0]]), np.array([[0.0, 0, 0], [10.0, 0, 0]]))
        (array([1., 2.]), array([3., 0.]))
    """
    dist, arc, _ = _project(points, line)
    return dist, arc


def _project(points, line):
    """`project_onto_polyline` plus the unit direction ``(N, 3)`` of the nearest segment of ``line``."""
    p = np.asarray(points, np.float64).reshape(-1, 3)
    line = np.asarray(line, np.float64).reshape(-1, 3)
    if len(line) == 1:
        return np.linalg.norm(p - line[0], axis=1), np.zeros(len(p)), np.zeros((len(p), 3))
    a, ab = line[:-1], np.diff(line, axis=0)
    seg = np.linalg.norm(ab, axis=1)
    start = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
    ap = p[:, None, :] - a[None]
    t = np.clip((ap * ab[None]).sum(-1) / np.maximum(seg * seg, 1e-300), 0.0, 1.0)
    d = np.linalg.norm(ap - t[..., None] * ab[None], axis=-1)
    k = np.argmin(d, axis=1)
    rows = np.arange(len(p))
    return d[rows, k], start[k] + t[rows, k] * seg[k], ab[k] / np.maximum(seg[k], 1e-300)[:, None]


def _overlap_merge(a: np.ndarray, b: np.ndarray, lateral_mm: float, cos_min: float, min_overlap_mm: float,
                   end_slack_mm: float, max_overlap_mm: float = np.inf) -> np.ndarray | None:
    """``a`` extended by ``b`` when ``b`` (no longer than ``a``) runs along it (module docstring), else None.

    With a finite ``max_overlap_mm`` (the slice-step case) the overlap must be at most that long and ``b`` must
    extend ``a``: a duplicate lying that far from ``a`` over its whole length is a neighbouring catheter.
    """
    b = resample_polyline(b, 1.0) if len(b) > 1 else b  # the overlap is measured on b's points: make them dense
    dist, arc, tangent = _project(b, a)
    near = np.flatnonzero(dist <= lateral_mm)
    if len(near) < 2:
        return None
    i0, i1 = int(near[0]), int(near[-1])
    overlap = polyline_length(b[i0:i1 + 1])
    if overlap < min_overlap_mm or overlap > max_overlap_mm or len(near) < 0.8 * (i1 - i0 + 1):
        return None  # too short to tell a direction, too long for a slice step, or b leaves a's tube mid-way
    # Direction over the overlap: b's steps against a's local direction (not the arc advanced along a, which
    # stops at a's ends while b runs on past them).
    steps = np.diff(b[i0:i1 + 1], axis=0)
    cos = float((steps * tangent[i0:i1]).sum() / max(np.linalg.norm(steps, axis=1).sum(), 1e-12))
    if abs(cos) < cos_min:
        return None
    if cos < 0:  # b runs the other way: make it run with a
        b, dist, arc = b[::-1], dist[::-1], arc[::-1]
        i0, i1 = len(b) - 1 - i1, len(b) - 1 - i0
    length_a = polyline_length(a)
    # Points of b clearly off a's tube (beyond twice lateral_mm: a track's last points fray) must lie past a's
    # ends: a crossing or touching catheter leaves a sideways, mid-way along it.
    off = dist > 2.0 * lateral_mm
    if np.any(off[:i0] & (arc[:i0] > end_slack_mm)) or np.any(off[i1 + 1:] & (arc[i1 + 1:] < length_a - end_slack_mm)):
        return None
    before, after = b[:i0], b[i1 + 1:]
    t_end, t_start = _end_tangent(a, 1), _end_tangent(a, 0)
    after = after[(after - a[-1]) @ t_end > 0] if t_end is not None else after[:0]
    before = before[(before - a[0]) @ t_start > 0] if t_start is not None else before[:0]
    if np.isfinite(max_overlap_mm) and len(before) == 0 and len(after) == 0:
        return None  # b adds nothing to a: a neighbour, not a continuation
    return np.concatenate([before, a, after])  # a duplicate inside a's tube adds nothing


def _end_tangent(t: np.ndarray, end: int) -> np.ndarray | None:
    """Unit direction leaving ``t`` through its last (``end=1``) or first (``end=0``) point, over ~5 points."""
    pts = t if end else t[::-1]
    d = pts[-1] - pts[max(0, len(pts) - 6)]
    n = np.linalg.norm(d)
    return d / n if n > 0 else None


def merge_overlapping_tracks(tracks: list[np.ndarray], lateral_mm: float, *, step_lateral_mm: float | None = None,
                             max_step_overlap_mm: float = 12.0, max_angle_deg: float = 30.0,
                             min_overlap_mm: float = 3.0, end_slack_mm: float | None = None) -> list[np.ndarray]:
    """Merge tracks lying along one catheter (overlapping pieces, duplicates); see the module docstring.

    Args:
        tracks: ``(n, 3)`` point sequences in mm, either order.
        lateral_mm: how far (mm) the shorter track's points may lie from the longer one's polyline, over an
            overlap of any length (duplicates included).
        step_lateral_mm: a looser distance for short overlaps at the ends only (at most ``max_step_overlap_mm``
            long, the shorter track extending the longer one): a catheter passing from one slice to the next can
            leave a piece on each slice, one slice spacing apart. None: ``lateral_mm`` only.
        max_step_overlap_mm: longest overlap merged at ``step_lateral_mm``; longer side-by-side runs at that
            distance are neighbouring catheters.
        max_angle_deg: largest angle between the two tracks over their overlap.
        min_overlap_mm: shortest overlap (along the shorter track) that counts.
        end_slack_mm: how far short of the longer track's end the shorter one may leave its tube
            (default ``2 * lateral_mm``: centroid tracks fray at their ends).

    Returns:
        The tracks left, longest pair first merged greedily until no pair qualifies; a merged track keeps the
        point order of the longer of its pieces.

    Example:
        >>> merge_overlapping_tracks([np.array([[0.0, 0, 0], [20, 0, 0]]), np.array([[15.0, .3, 0], [40, .3, 0]])],
        ...                          lateral_mm=1.0)[0][[0, -1], 0]
        array([ 0., 40.])
    """
    slack = 2.0 * lateral_mm if end_slack_mm is None else float(end_slack_mm)
    cos_min = float(np.cos(np.radians(max_angle_deg)))
    margin = max(lateral_mm, step_lateral_mm or 0.0)
    tracks = [np.asarray(t, np.float64).reshape(-1, 3) for t in tracks]
    # Pieces shorter than an overlap can never qualify (stubs, speckle of a poor prediction): left as they are,
    # which keeps the pairwise search small.
    live = {k: t for k, t in enumerate(tracks) if polyline_length(t) >= min_overlap_mm}
    short = [t for t in tracks if polyline_length(t) < min_overlap_mm]
    length = {k: polyline_length(t) for k, t in live.items()}
    box = {k: (t.min(0), t.max(0)) for k, t in live.items()}

    # Candidate pairs (bounding boxes within `margin`), tried longest pair first; a merged track gets a new
    # identity and its own candidates. A heap instead of re-scanning every pair after each merge: a poor
    # prediction can leave a thousand tracks.
    heap: list = []

    def push(k: int, others: list[int]) -> None:
        if not others:
            return
        lo = np.stack([box[o][0] for o in others])
        hi = np.stack([box[o][1] for o in others])
        near = ~(np.any(box[k][0] - margin > hi, axis=1) | np.any(lo - margin > box[k][1], axis=1))
        for o in (others[i] for i in np.flatnonzero(near)):
            a, b = (k, o) if (length[k], -k) >= (length[o], -o) else (o, k)
            heapq.heappush(heap, (-length[a], -length[b], a, b))

    keys = sorted(live)
    if keys:
        lo = np.stack([box[k][0] for k in keys])
        hi = np.stack([box[k][1] for k in keys])
        near = ~(np.any(lo[:, None] - margin > hi[None], axis=2) | np.any(lo[None] - margin > hi[:, None], axis=2))
        for i, j in zip(*np.nonzero(np.triu(near, 1))):
            ka, kb = keys[i], keys[j]
            a, b = (ka, kb) if (length[ka], -ka) >= (length[kb], -kb) else (kb, ka)
            heap.append((-length[a], -length[b], a, b))
        heapq.heapify(heap)
    next_id = len(tracks)
    while heap:
        _, _, ka, kb = heapq.heappop(heap)
        if ka not in live or kb not in live:
            continue  # one of them was merged into another track already
        a, b = live[ka], live[kb]
        joined = _overlap_merge(a, b, lateral_mm, cos_min, min_overlap_mm, slack)
        if joined is None and step_lateral_mm is not None and step_lateral_mm > lateral_mm:
            joined = _overlap_merge(a, b, step_lateral_mm, cos_min, min_overlap_mm,
                                    max(slack, 2.0 * step_lateral_mm), max_step_overlap_mm)
        if joined is None:
            continue
        for k in (ka, kb):
            del live[k], length[k], box[k]
        live[next_id], length[next_id], box[next_id] = joined, polyline_length(joined), (joined.min(0),
                                                                                           joined.max(0))
        push(next_id, [k for k in live if k != next_id])
        next_id += 1
    return [live[k] for k in sorted(live, key=lambda k: -length[k])] + short


def _far_apart(a: np.ndarray, b: np.ndarray, margin_mm: float) -> bool:
    """Cheap reject: bounding boxes further apart than ``margin_mm`` on some axis."""
    return bool(np.any(a.min(0) - margin_mm > b.max(0)) or np.any(b.min(0) - margin_mm > a.max(0)))


__all__ = ["merge_overlapping_tracks", "project_onto_polyline"]
