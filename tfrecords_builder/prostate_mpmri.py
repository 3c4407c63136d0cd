"""Convert PROSTATEx-style prostate mpMRI (T2, DWI, ADC DICOM + lesion CSVs) into lesion-patch TFRecords.

Input layout (a TCIA download of "SPIE-AAPM-NCI PROSTATEx Challenges" plus its lesion-information CSVs; the
CSVs may sit in the input folder or up to two levels below it, or be given with --findings-csv/--images-csv)::

    <input>/PROSTATEx/ProstateX-0000/07-07-2011-MR prostaat ...-05711/4-t2tsetra-00702/1-01.dcm ...
                                                                  /7-ep2ddifftraDYNDIST-83202/...    b 50/400/800
                                                                  /8-ep2ddifftraDYNDISTADC-49281/...
                                                                  /9-ep2ddifftraDYNDISTCALCBVAL-11203/...  b 1400
    <input>/ProstateX-TrainingLesionInformationv2/ProstateX-Findings-Train.csv  ProxID,fid,pos,zone,ClinSig
    <input>/ProstateX-TrainingLesionInformationv2/ProstateX-Images-Train.csv    ProxID,Name,fid,pos,...,ijk,DCMSerNum
    <input>/ProstateX-TestLesionInformation/ProstateX-Findings-Test.csv         no ClinSig: label -1

One example per finding (see `medtf.data.schema.PROSTATE_MPMRI`): an ``(H, W, 3)`` float32 patch of T2, DWI with
the highest b-value and ADC, all sampled (linear) on ONE grid in physical space, so a pixel is the same tissue
in every channel: a square of --patch-mm at --patch-size pixels in the transverse T2's plane, centred on the
lesion (default 65 mm / 65 px = the source thesis's 130 px of 0.5 mm T2 resized to 65). Sequences finer than the
patch are Gaussian-smoothed first (no aliasing). The lesion centre is, with ``--locate ijk`` (default), the T2
row's ``ijk`` (0-based voxel index) through the T2's DICOM geometry, or with ``--locate pos`` the CSV's ``pos``;
the ``ijk`` of T2, DWI and ADC must lie within --ijk-tolerance voxels of ``pos`` (catches 1-based slice numbers).
Each sequence is z-scored per patient: mean and std over ALL native voxels of that patient's series (the chosen
b-value stack for DWI), before resampling; patch pixels outside a series' field of view are 0 (its mean).

The patient is the case and the split unit; splits are stratified by ClinSig (any significant finding / none /
unlabelled). A missing sequence fails the patient; a bad finding (ijk outside the image, no Images row, ijk and
pos disagreeing) is skipped and recorded while the patient's other findings convert. Control images like the
thesis's "red dot" check go to ``<output>/alignment/<example_id>.png``: top row the native T2 / DWI / ADC slices
with the lesion dot from each series' ``ijk``, bottom row the three patch channels with the dot at the centre.

Usage::

    medtf convert prostate-mpmri --input data/prostatex --output shards/prostatex --patch-mm 65 --patch-size 65
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from medtf.data import deid
from medtf.data.schema import PROSTATE_MPMRI
from medtf.io.errors import InputError, UnreadableDicomError
from tfrecords_builder import prostatex_layout as layout
from tfrecords_builder.engine import Case, CaseOutput, Converter, converter_main

ALIGNMENT_DIR = "alignment"
CHANNELS = ("t2_tra", "dwi", "adc")


def zscore(volume):
    """``(float32 array, mean, std)`` of a `Volume` normalised over all its voxels (per patient, per sequence).

    Args:
        volume: one native series of one patient, array ``(z, y, x)``.

    Example:
        >>> normalised, mean, std = zscore(read_dicom_series(t2_files))
        >>> float(normalised.mean()), float(normalised.std())   # ~(0.0, 1.0)
    """
    data = volume.array.astype(np.float64)
    mean, std = float(data.mean()), float(data.std())
    if not np.isfinite(std) or std < 1e-6:
        raise ValueError("image is constant; cannot z-score it")
    return ((data - mean) / std).astype(np.float32), mean, std


def antialiased(volume, array: np.ndarray, patch_spacing: float):
    """SimpleITK image of ``array`` on ``volume``'s grid, Gaussian-smoothed in-plane where the patch is coarser."""
    import SimpleITK as sitk

    image = volume.with_array(array).to_sitk()
    sigma_px = [max(0.0, (patch_spacing / s - 1.0) / 2.0) for s in volume.spacing[:2]]
    if max(sigma_px) > 0:
        variance = [(p * s) ** 2 for p, s in zip(sigma_px, volume.spacing[:2])] + [0.0]
        image = sitk.DiscreteGaussian(image, variance, 32, 0.01, True)
    return image


def sample_patch(image, centre, direction: np.ndarray, spacing: float, size: int) -> np.ndarray:
    """``(size, size)`` float32 plane through ``centre`` (mm LPS) spanned by ``direction``'s first two columns
    (rows follow the second column, as a DICOM slice); pixel ``((size-1)/2, (size-1)/2)`` is the centre.

    Args:
        image: SimpleITK image (any grid); sampled with linear interpolation, 0 outside it.
        centre: lesion centre ``(x, y, z)`` in mm.
        direction: 3x3 matrix whose columns are the patch's x (columns) and y (rows) axes and the normal.
        spacing: patch pixel size in mm; ``size``: patch side in pixels.

    Example:
        >>> t2_patch = sample_patch(t2.to_sitk(), centre, t2.direction_matrix, 1.0, 65)   # (65, 65)
    """
    import SimpleITK as sitk

    half = (size - 1) / 2.0 * spacing
    origin = np.asarray(centre, float) - direction[:, 0] * half - direction[:, 1] * half
    out = sitk.Resample(image, [size, size, 1], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                        [spacing, spacing, 1.0], direction.ravel().tolist(), 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)[0]


def _inside(volume, index, margin: float = 0.5) -> bool:
    size = np.asarray(volume.shape_xyz)
    return bool(np.all(np.asarray(index) >= -margin) and np.all(np.asarray(index) <= size - 1 + margin))


class ProstateMpmriConverter(Converter):
    kind = "prostate-mpmri"
    schema = PROSTATE_MPMRI
    stratify_by = "ClinSig of the patient's findings (any significant / none / unlabelled)"
    stratify_at_discovery = True  # ClinSig is in the findings CSV: splits are known before conversion

    def add_arguments(self, parser):
        group = parser.add_argument_group("prostate-mpmri options")
        group.add_argument("--patch-mm", type=float, default=65.0, help="patch side in mm (default %(default)s)")
        group.add_argument("--patch-size", type=int, default=65, help="patch side in pixels (default %(default)s)")
        group.add_argument("--locate", choices=["ijk", "pos"], default="ijk",
                           help="lesion centre from the T2 row's ijk (default) or from the findings CSV's pos")
        group.add_argument("--ijk-tolerance", type=float, default=1.0,
                           help="skip a finding whose ijk is this many voxels or more from pos on any axis "
                                "(default %(default)s; 0 turns the check off)")
        group.add_argument("--findings-csv", action="append", type=Path, default=None,
                           help="findings CSV (repeatable; default: ProstateX-Findings-*.csv under --input)")
        group.add_argument("--images-csv", action="append", type=Path, default=None,
                           help="images CSV, one per --findings-csv (default: the ...-Images-... file beside it)")
        group.add_argument("--no-alignment-pngs", action="store_true", help="do not write alignment/ control PNGs")

    def case_options(self, options) -> dict:
        if options.patch_mm <= 0 or options.patch_size < 3:
            raise ValueError(f"--patch-mm must be > 0 and --patch-size >= 3, got {options.patch_mm}, "
                             f"{options.patch_size}")
        return {"patch_mm": options.patch_mm, "patch_size": options.patch_size, "locate": options.locate,
                "ijk_tolerance": options.ijk_tolerance, "channels": ["T2 transverse", "DWI highest b", "ADC"],
                "normalisation": "z-score per patient and sequence over all native voxels"}

    def discover(self, input_dir: Path, options):
        self.case_options(options)
        need_pos = options.locate == "pos"
        failures, findings, images, sources = [], {}, {}, {}
        for f_csv, i_csv in layout.find_csv_pairs(input_dir, options.findings_csv, options.images_csv):
            rel = _rel(f_csv, input_dir)
            role, path = "Findings CSV", f_csv
            try:
                if i_csv is None and not need_pos:
                    raise InputError(f_csv, "no Images CSV beside it (needed for ijk; give --images-csv or use "
                                            "--locate pos)")
                table = layout.read_findings(f_csv, rel, need_pos)
                role, path = "Images CSV", i_csv
                rows = layout.read_images(i_csv) if i_csv is not None else {}
            except (InputError, OSError, UnicodeDecodeError) as exc:
                # The engine writes the path as a pseudonym: the reason says which CSV, never its path.
                reason = exc.reason if isinstance(exc, InputError) else f"unreadable ({type(exc).__name__})"
                failures.append((_rel(Path(path), input_dir), f"{role}: {reason}; the findings listed with it "
                                                              "were not converted"))
                continue
            for prox, items in table.items():
                findings.setdefault(prox, []).extend(items)
                images.setdefault(prox, []).extend(rows.get(prox, []))
                sources.setdefault(prox, []).extend(p for p in (f_csv, i_csv) if p is not None)
        if not findings and not failures:
            failures.append((".", f"no {layout.FINDINGS_GLOB} found (give --findings-csv)"))
        folders = layout.patient_folders(input_dir)
        cases = []
        for prox in sorted(findings):
            folder = folders.get(prox)
            raw = (prox,) + ((folder.name, *[p.name for p in folder.iterdir() if p.is_dir()]) if folder else ())
            cases.append(Case(key=_rel(folder, input_dir) if folder else prox, patient_id=prox,
                              paths=((folder,) if folder else ()) + tuple(dict.fromkeys(sources[prox])),
                              raw_ids=raw, info=(tuple(findings[prox]), tuple(images[prox])),
                              stratum=_stratum(f.label for f in findings[prox])))
        return cases, failures

    def convert_case(self, case: Case, options) -> CaseOutput:
        findings, rows = case.info
        folder = case.paths[0] if case.paths and case.paths[0].is_dir() else None
        if folder is None:
            raise InputError(case.paths[0] if case.paths else None,
                             "no DICOM folder named after this patient's ProxID under the input")
        series = layout.list_series(folder)
        chosen = layout.choose_series(series, {r.series_number for r in rows})
        settings = self.case_options(options)
        spacing = settings["patch_mm"] / settings["patch_size"]
        volumes, images = {}, {}
        for kind in CHANNELS:
            s, files, _ = chosen[kind]
            volumes[kind] = _read_series(s, files)
            try:
                normalised, _, _ = zscore(volumes[kind])
            except ValueError as exc:
                raise InputError(s.path, f"{s.label}: {exc}") from None
            images[kind] = antialiased(volumes[kind], normalised, spacing)
        direction = volumes["t2_tra"].direction_matrix

        examples, failures, controls = [], [], []
        for finding in sorted(findings, key=lambda f: f.fid):
            try:
                centre, dots = self._locate(finding, rows, chosen, volumes, settings)
            except ValueError as exc:
                failures.append((Path(finding.source), f"fid {finding.fid}: {exc}"))
                continue
            patch = np.stack([sample_patch(images[k], centre, direction, spacing, settings["patch_size"])
                              for k in CHANNELS], axis=-1)
            examples.append({"image": patch.astype(np.float32), "label": finding.label, "finding_id": finding.fid,
                             "zone": finding.zone, "lesion_position": np.asarray(centre, np.float32),
                             "pixel_spacing": np.array([spacing, spacing], np.float32)})
            controls.append(dots)
        if not options.no_alignment_pngs:
            self._write_alignment(case, options, volumes, examples, controls)
        return CaseOutput(examples=examples, stratum=case.stratum, failures=failures)

    @staticmethod
    def _locate(finding, rows, chosen, volumes, settings):
        """Lesion centre (mm LPS) and per sequence the (slice, i, j) of its dot; `ValueError` explains a reject."""
        if finding.problem:
            raise ValueError(finding.problem)
        mine = {}
        for r in rows:
            if r.fid == finding.fid:
                mine.setdefault(r.series_number, r)
        ijks = {}
        for kind in CHANNELS:
            s, vol = chosen[kind][0], volumes[kind]
            row = mine.get(s.number)
            if row is None:
                continue
            ijk = np.asarray(layout.parse_numbers(row.ijk, 3, f"ijk of {s.label}"))
            if not _inside(vol, ijk, margin=0.0):
                raise ValueError(f"ijk {row.ijk} of {s.label} lies outside its image of {vol.shape_xyz} voxels")
            if finding.pos is not None and settings["ijk_tolerance"] > 0:
                dev = np.abs(ijk - vol.physical_to_index(finding.pos))
                if dev.max() >= settings["ijk_tolerance"] * (1 - 1e-6):
                    raise ValueError(f"ijk {row.ijk} of {s.label} is {dev.max():.2f} voxels from pos "
                                     f"{' '.join(f'{v:g}' for v in finding.pos)} (ijk is 0-based; 1-based slice "
                                     "numbers such as InstanceNumber are off by one)")
            ijks[kind] = ijk
        if settings["locate"] == "pos":
            if finding.pos is None:
                raise ValueError("no pos in the findings CSV (needed with --locate pos)")
            centre = np.asarray(finding.pos, float)
        elif "t2_tra" not in ijks:
            raise ValueError(f"no Images-CSV row with ijk for the chosen T2 ({chosen['t2_tra'][0].label})")
        else:
            centre = volumes["t2_tra"].index_to_physical(ijks["t2_tra"])
        dots = {}
        for kind in CHANNELS:
            index = volumes[kind].physical_to_index(centre)
            if not _inside(volumes[kind], index):
                raise ValueError(f"lesion centre {np.round(centre, 2).tolist()} mm lies outside the "
                                 f"{chosen[kind][0].label} image")
            dots[kind] = ijks.get(kind, np.rint(index))
        return centre, dots

    def _write_alignment(self, case, options, volumes, examples, controls):
        from medtf.data.alignment import render_alignment, write_png_atomic

        key = deid.load_or_create_key(options.output, options.id_salt, options.id_key_file)
        case_hash = deid.IdHasher(key, prefix="c")(case.key)  # the engine's example_id is <case hash>-<index>
        out = Path(options.output) / ALIGNMENT_DIR
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(f"{case_hash}-*.png"):
            stale.unlink()
        for i, (example, dots) in enumerate(zip(examples, controls)):
            before = []
            for kind in CHANNELS:
                k = int(np.clip(np.rint(dots[kind][2]), 0, volumes[kind].array.shape[0] - 1))
                before.append((volumes[kind].array[k], (float(dots[kind][0]), float(dots[kind][1]))))
            write_png_atomic(out / f"{case_hash}-{i:04d}.png", render_alignment(before, example["image"]))


def _read_series(series, files):
    """The chosen files of a series folder as a `Volume`; a damaged DICOM file anywhere in the folder (also in
    another b-value stack, where it could be one of the chosen stack's slices) fails the series, naming it."""
    from medtf.io.dicom_headers import read_header
    from medtf.io.dicom_series import read_dicom_series

    chosen = set(files)
    try:
        for path in series.files:
            if path not in chosen:
                try:
                    read_header(path)
                except UnreadableDicomError:
                    raise
                except InputError:  # not DICOM, or no series object: not a slice of this series
                    pass
        return read_dicom_series(files)
    except UnreadableDicomError as exc:
        raise InputError(exc.path, f"unreadable DICOM file in the folder of {series.label}: {exc.reason}; it may "
                                   "be one of the series' slices, so the series is not read: remove or replace "
                                   "it") from None


def _stratum(labels) -> str:
    """A patient's split stratum from the CSV's ClinSig of all its findings."""
    labels = set(labels)
    return "significant" if 1 in labels else ("not significant" if 0 in labels else "unlabelled")


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return os.fspath(Path(path).name)


def main(argv=None) -> int:
    return converter_main(ProstateMpmriConverter(), argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
