"""Synthetic breast HDR-brachytherapy cases: a planning CT with visible needles plus the matching RT Plan.

Layout written (one folder per patient, as a TPS export)::

    <out>/<PatientID>/CT/<SOPInstanceUID>.dcm     # CT Image Storage, int16, slope 1, intercept -1024
    <out>/<PatientID>/RP.<SOPInstanceUID>.dcm     # RT Plan Storage, HDR interstitial, one channel per needle

Patient identifiers are synthetic but shaped like real ones so that de-identification can be tested: case ``i``
(1-based) is ``PatientName "SYNTH^BRACHY^<iii>"``, ``PatientID "SYNBR<iii>"`` (also the folder name) and a
seed-dependent ``PatientBirthDate``; `brachy_case_identity` returns them.

Phantom (patient supine, LPS: +x left, +y posterior, +z superior): air outside the body, a half-ellipsoid breast
(fat around -100 HU with glandular +40 HU blobs, 2 mm skin) on a chest-wall muscle layer. The catheters are gently
curved (quadratic bend) and mostly lateral. The plan's channel polylines are the catheter paths resampled at the
dwell step, and exactly those polylines are drawn into the CT, so image and plan agree.

``realism="clinical"`` (the default, `medtf.synth.brachy_appearance`): plastic tubes of 2 mm outer diameter (wall
+100..+200 HU) around an air lumen, partial-volumed by supersampling; radio-opaque dummy wires in some catheters only;
surgical clips with metal streaks and calcifications as unlabelled bright distractors; in-plane blur and noise
sigma 20-40 HU. A HU threshold finds wires, clips and calcifications, not the catheters (see
``tests/synth/test_brachy_realism.py``). ``realism="bright-needles"``: the old easy look (+1500 HU within 0.8 mm,
noise 12 HU), kept for tests of evaluation and reconstruction plumbing whose known-output models threshold the CT.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage

from medtf.io.volume import Volume
from medtf.rt.polyline import resample_polyline
from medtf.rt.rasterize import polyline_distance_map
from medtf.synth import brachy_appearance
from medtf.synth.dicom_writer import write_dicom_series
from medtf.synth.rtplan_writer import write_brachy_plan

AIR_HU, FAT_HU, GLAND_HU, SKIN_HU, MUSCLE_HU, SOFT_HU = -1000.0, -100.0, 40.0, 30.0, 50.0, 35.0
NEEDLE_HU = 1500.0
NEEDLE_RADIUS_MM = 0.8
NOISE_HU = 12.0
MIN_NEEDLE_GAP_MM = 5.0
REALISM = ("clinical", "bright-needles")


@dataclasses.dataclass(frozen=True)
class SyntheticIdentity:
    """Synthetic patient identifiers written into every DICOM file of one case."""

    patient_name: str
    patient_id: str
    birth_date: str


def brachy_case_identity(case_index: int, seed: int = 0) -> SyntheticIdentity:
    """Identifiers of case ``case_index`` (0-based) for ``seed``: ``SYNTH^BRACHY^001`` / ``SYNBR001`` / date."""
    n = case_index + 1
    rng = np.random.default_rng([seed, n, 7])
    birth = f"{int(rng.integers(1940, 1986))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    return SyntheticIdentity(f"SYNTH^BRACHY^{n:03d}", f"SYNBR{n:03d}", birth)


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=["medtf.synth.brachy_ct", *[str(p) for p in parts]])


def _phantom(rng: np.random.Generator, volume: Volume) -> tuple[np.ndarray, dict]:
    """Tissue HU map ``(z, y, x)`` float32 without needles/noise, and the breast geometry (mm, volume centre 0;
    ``geo["breast"]`` is the breast mask)."""
    nz, ny, nx = volume.array.shape
    sx, sy, sz = volume.spacing
    z, y, x = (np.arange(n, dtype=np.float32) - (n - 1) / 2 for n in (nz, ny, nx))
    Z, Y, X = z[:, None, None] * sz, y[None, :, None] * sy, x[None, None, :] * sx
    half = np.array([nx * sx, ny * sy, nz * sz]) / 2  # FOV half-extent (x, y, z)
    geo = {
        "chest_y": float(half[1] * rng.uniform(0.3, 0.45)),
        "center": np.array([rng.uniform(-3, 3), 0.0, rng.uniform(-3, 3)]),
        "axes": np.array([half[0] * rng.uniform(0.8, 0.95), half[1] * rng.uniform(0.9, 1.05),
                          half[2] * rng.uniform(0.8, 0.95)]),
    }
    cx, _, cz = geo["center"]
    ax, ay, az = geo["axes"]
    cy = geo["chest_y"]
    rho = np.sqrt(((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2 + ((Z - cz) / az) ** 2)
    breast = (rho <= 1.0) & (Y < cy)
    chest = np.broadcast_to(Y >= cy, breast.shape)
    body = breast | chest
    depth = ndimage.distance_transform_edt(body, sampling=(sz, sy, sx))
    noise = rng.standard_normal((nz, ny, nx)).astype(np.float32)
    smooth = ndimage.gaussian_filter(noise, (4.0 / sz, 4.0 / sy, 4.0 / sx))  # ~4 mm glandular lobules
    gland = breast & (rho < 0.8) & (smooth > np.quantile(smooth, 0.6))
    hu = np.full(body.shape, AIR_HU, np.float32)
    hu[breast] = FAT_HU
    hu[gland] = GLAND_HU
    hu[chest & (Y < cy + 10.0)] = MUSCLE_HU
    hu[chest & (Y >= cy + 10.0)] = SOFT_HU
    hu[body & (depth <= 2.0)] = SKIN_HU
    hu = ndimage.gaussian_filter(hu, 0.6)  # soften tissue boundaries a little (partial volume)
    geo["breast"] = breast & (depth > 2.0)
    return hu, geo


def _needles(rng: np.random.Generator, geo: dict, half_fov: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` dense (~1 mm) curved needle paths through the breast, tip first, at least MIN_NEEDLE_GAP_MM apart.

    As in the clinic, all needles of a patient enter from one side (drawn per patient), where their connector ends
    leave the body and run to the edge of the field of view; the tips stop 3-8 mm inside the opposite skin. So the
    tip is the deep end and the connector the end at the image border, the rule `medtf.rt.reconstruct` uses.
    """
    cx, _, cz = geo["center"]
    ax, ay, az = geo["axes"]
    cy = geo["chest_y"]
    rows = np.arange(cy - 10.0, cy - 0.7 * ay, -11.0)
    cols = np.arange(cz - 0.55 * az, cz + 0.55 * az + 1e-6, 11.0)
    slots = [(yy, zz + (5.5 if i % 2 else 0.0)) for i, yy in enumerate(rows) for zz in cols]
    slots = [s for s in slots if ((s[0] - cy) / ay) ** 2 + ((s[1] - cz) / az) ** 2 < 0.55]
    order = rng.permutation(len(slots))
    side = 1.0 if rng.random() < 0.5 else -1.0  # +1: connectors on the +x (patient left) side
    paths: list[np.ndarray] = []
    for slot in order:
        if len(paths) == n:
            break
        for _ in range(10):
            y0, z0 = np.array(slots[slot]) + rng.uniform(-1.5, 1.5, 2)
            w = ax * np.sqrt(max(1.0 - ((y0 - cy) / ay) ** 2 - ((z0 - cz) / az) ** 2, 0.0))
            inside = rng.uniform(3.0, 8.0)
            if side > 0:
                x_lo, x_hi = max(cx - w + inside, -half_fov[0] + 2.0), half_fov[0] - 2.0
            else:
                x_lo, x_hi = -half_fov[0] + 2.0, min(cx + w - inside, half_fov[0] - 2.0)
            if x_hi - x_lo < 30.0:
                break
            tilt = rng.uniform(-0.05, 0.05, 2)
            u = np.linspace(0.0, 1.0, int(np.ceil(x_hi - x_lo)) + 1)[:, None]
            line = np.array([x_lo, y0, z0]) + u * (x_hi - x_lo) * np.array([1.0, tilt[0], tilt[1]])
            perp = np.cross([1.0, tilt[0], tilt[1]], rng.standard_normal(3))
            path = line + 4.0 * u * (1.0 - u) * rng.uniform(1.0, 3.0) * perp / np.linalg.norm(perp)
            path = np.clip(path, -half_fov + 2.0, half_fov - 2.0)
            gap = min((np.min(np.linalg.norm(path[:, None] - p[None], axis=-1)) for p in paths), default=np.inf)
            if gap >= MIN_NEEDLE_GAP_MM:
                paths.append(path if side > 0 else path[::-1])  # tip first: the end away from the insertion side
                break
    return paths


def generate_brachy_case(
    case_dir: str | os.PathLike,
    case_index: int,
    *,
    seed: int = 0,
    shape: tuple[int, int, int] = (48, 96, 96),
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    n_catheters: tuple[int, int] = (5, 10),
    dwell_step_mm: float = 5.0,
    realism: str = "clinical",
) -> tuple[Path, Path]:
    """Write one case (CT series + plan) into ``case_dir``; returns ``(ct_dir, plan_path)``."""
    if realism not in REALISM:
        raise ValueError(f"realism must be one of {REALISM}, got {realism!r}")
    rng = np.random.default_rng([seed, case_index, 12345])
    ident = brachy_case_identity(case_index, seed)
    case_dir = Path(case_dir)
    nz, ny, nx = shape
    half_fov = np.array([nx * spacing[0], ny * spacing[1], nz * spacing[2]]) / 2
    table_z = float(np.round(rng.uniform(-200.0, -100.0), 1))  # scanner coordinates, not centred at 0
    origin = -half_fov + np.asarray(spacing) / 2 + np.array([0.0, 0.0, table_z])
    volume = Volume(np.zeros(shape, np.int16), spacing=spacing, origin=origin)

    hu, geo = _phantom(rng, volume)
    n = int(rng.integers(n_catheters[0], n_catheters[1] + 1))
    dense = [p + np.array([0.0, 0.0, table_z]) for p in _needles(rng, geo, half_fov, n)]
    if len(dense) < n_catheters[0]:
        raise RuntimeError(f"could only place {len(dense)} of {n} needles; enlarge the field of view")
    plan_lines = [resample_polyline(p, dwell_step_mm) for p in dense]
    if realism == "clinical":
        look_rng = np.random.default_rng([seed, case_index, 4242])  # apart from `rng`: the plan stays the same
        look = brachy_appearance.draw_appearance(look_rng, len(plan_lines))
        hu = brachy_appearance.draw_catheters(hu, plan_lines, volume, look)
        near, _ = polyline_distance_map(plan_lines, volume, 4.0)
        hu, _ = brachy_appearance.add_distractors(look_rng, hu, volume, geo["breast"], near)
        hu = brachy_appearance.finish(look_rng, hu, volume, look)
    else:
        ramp = 0.5 * float(np.linalg.norm(spacing))  # worst-case distance from a path to the nearest voxel centre
        dist, _ = polyline_distance_map(plan_lines, volume, NEEDLE_RADIUS_MM + ramp)
        w = np.clip((NEEDLE_RADIUS_MM + ramp - dist) / ramp, 0.0, 1.0)
        hu = hu * (1.0 - w) + NEEDLE_HU * w + rng.normal(0.0, NOISE_HU, shape).astype(np.float32)
    ct = volume.with_array(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), modality="CT")

    study_uid = _uid("study", seed, case_index)
    for_uid = _uid("frame-of-reference", seed, case_index)
    ct_dir = case_dir / "CT"
    write_dicom_series(
        ct, ct_dir, modality="CT", patient_name=ident.patient_name, patient_id=ident.patient_id,
        birth_date=ident.birth_date, study_uid=study_uid, series_uid=_uid("ct-series", seed, case_index),
        frame_of_reference_uid=for_uid, series_description="Synthetic breast brachytherapy planning CT",
        rescale_slope=1.0, rescale_intercept=-1024.0, window=(40.0, 400.0), seed=seed, body_part="BREAST",
        laterality="L",
    )
    plan_uid = _uid("plan", seed, case_index)
    dwell_times = [rng.uniform(2.0, 8.0, len(p)).round(1) for p in plan_lines]
    plan_path = write_brachy_plan(
        case_dir / f"RP.{plan_uid}.dcm", dense, frame_of_reference_uid=for_uid,
        patient_name=ident.patient_name, patient_id=ident.patient_id, birth_date=ident.birth_date,
        study_uid=study_uid, seed=seed, dwell_step_mm=dwell_step_mm, dwell_time_s=dwell_times,
        sop_instance_uid=plan_uid,
    )
    return ct_dir, plan_path


def generate_brachy_ct(
    out_dir: str | os.PathLike,
    cases: int = 4,
    seed: int = 0,
    shape: tuple[int, int, int] = (48, 96, 96),
    spacing: tuple[float, float, float] = (1.0, 1.0, 2.0),
    n_catheters: tuple[int, int] = (5, 10),
    realism: str = "clinical",
) -> list[Path]:
    """Write ``cases`` synthetic breast-brachytherapy patients under ``out_dir``.

    Args:
        out_dir: created if needed; one sub-folder per patient, named by its synthetic PatientID.
        cases: number of patients.
        seed: everything (images, needles, UIDs, birth dates) is a deterministic function of the seed.
        shape: CT size ``(z, y, x)``.
        spacing: voxel size ``(x, y, z)`` in mm.
        n_catheters: inclusive range of needles per patient.
        realism: ``"clinical"`` (plastic catheters with an air lumen, dummy wires in some, clips, calcifications,
            streaks, noise 20-40 HU) or ``"bright-needles"`` (the old thresholdable look, for plumbing tests).

    Returns:
        The case folders, in case order.

    Example:
        >>> dirs = generate_brachy_ct(tmp_path / "brachy", cases=2, seed=3)
        >>> read_brachy_plan(next(dirs[0].glob("RP*.dcm"))).catheters[0].points.shape
    """
    out_dir = Path(out_dir)
    dirs = []
    for i in range(cases):
        case_dir = out_dir / brachy_case_identity(i, seed).patient_id
        generate_brachy_case(case_dir, i, seed=seed, shape=shape, spacing=spacing, n_catheters=n_catheters,
                             realism=realism)
        dirs.append(case_dir)
    return dirs


__all__ = ["SyntheticIdentity", "brachy_case_identity", "generate_brachy_case", "generate_brachy_ct"]
