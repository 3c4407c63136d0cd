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
lesion (default 65 mm / 65 px, the field of the source thesis's 130 px of 0.5 mm T2 resized to 65). Sequences finer
than the patch are Gaussian-smoothed first (no aliasing). ``--native-crop PX`` instead crops PX x PX pixels at the
T2's own in-plane pixel size (every channel on that grid, no smoothing) and resizes them to --patch-size with
bicubic interpolation (PIL's kernel): ``--native-crop 130 --patch-size 65`` is the thesis's crop exactly.
``--channels dwi`` stores the DWI (highest b) alone, one channel, still sampled on the T2's plane through the T2's
geometry (the thesis's transfer-learning chain used prostate DWI only); ADC is then not needed. The lesion centre
is, with ``--locate ijk`` (default), the T2 row's ``ijk`` (0-based voxel index) through the T2's DICOM geometry,
or with ``--locate pos`` the CSV's ``pos``; the ``ijk`` of T2, DWI and ADC must lie within --ijk-tolerance voxels
of ``pos`` (catches 1-based slice numbers).
Each sequence is z-scored per patient: mean and std over ALL native voxels of that patient's series (the chosen
b-value stack for DWI), before resampling; patch pixels outside a series' field of view are 0 (its mean).

The patient is the case and the split unit; splits are stratified by ClinSig (any significant finding / none /
unlabelled). A missing sequence fails the patient; a bad finding (ijk outside the image, no Images row, ijk and
pos disagreeing) is skipped and recorded while the patient's other findings convert. Control images like the
thesis's "red dot" check go to ``<output>/alignment/<example_id>.png``: top row the native T2 / DWI / ADC slices
with the lesion dot from each series' ``ijk``, bottom row the three patch channels with the dot at the centre.

Usage::

    medtf convert prostate-mpmri --input data/prostatex --output shards/prostatex --patch-mm 65 --patch-size 65
    medtf convert prostate-mpmri --input data/prostatex --output shards/px-dwi --channels dwi --native-crop 130
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from medtf.data import deid
from medtf.data.schema import PROSTATE_MPMRI
from medtf.io.errors import InputError
from tfrecords_builder import prostatex_layout as layout
from tfrecords_builder.engine import Case, CaseOutput, Converter, converter_main
from tfrecords_builder.prostate_patches import (  # noqa: F401 - zscore/antialiased/sample_patch: public here too
    CHANNEL_NAMES, CHANNEL_SETS, antialiased, inside, lesion_patch, load_sequences, sample_patch, zscore)

ALIGNMENT_DIR = "alignment"
CHANNELS = CHANNEL_SETS["t2-dwi-adc"]
DEFAULT_PATCH_MM = 65.0


def alignment_folder(options, case) -> tuple[Path, str]:
    """``OUTPUT/alignment`` (created) and the case's hash, which prefixes its control PNGs (the engine's
    example_id is ``<case hash>-<index>``); the case's PNGs of an earlier conversion are removed."""
    key = deid.load_or_create_key(options.output, options.id_salt, options.id_key_file)
    case_hash = deid.IdHasher(key, prefix="c")(case.key)
    out = Path(options.output) / ALIGNMENT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{case_hash}-*.png"):
        stale.unlink()
    return out, case_hash


class ProstateMpmriConverter(Converter):
    kind = "prostate-mpmri"
    schema = PROSTATE_MPMRI
    stratify_by = "ClinSig of the patient's findings (any significant / none / unlabelled)"
    stratify_at_discovery = True  # ClinSig is in the findings CSV: splits are known before conversion

    def add_arguments(self, parser):
        group = parser.add_argument_group("prostate-mpmri options")
        group.add_argument("--patch-mm", type=float, default=None,
                           help=f"patch side in mm (default {DEFAULT_PATCH_MM:g}; not with --native-crop)")
        group.add_argument("--patch-size", type=int, default=65, help="patch side in pixels (default %(default)s)")
        group.add_argument("--native-crop", type=int, default=None, metavar="PX",
                           help="the thesis's crop: PX x PX pixels at the T2's own in-plane pixel size (no "
                                "smoothing), every channel sampled on that grid, then resized to --patch-size with "
                                "bicubic interpolation (--native-crop 130 --patch-size 65: 130 px of 0.5 mm T2 -> "
                                "65 px); default: --patch-mm at --patch-size directly")
        group.add_argument("--channels", choices=sorted(CHANNEL_SETS), default="t2-dwi-adc",
                           help="t2-dwi-adc (default): T2, DWI highest b and ADC stacked; dwi: DWI highest b alone "
                                "(one channel), sampled on the T2's plane through the T2's geometry, as the "
                                "thesis's transfer-learning chain (the T2 is still needed; ADC is not)")
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
        """Everything that shapes a patch; the export copies it into medtf.json for `medtf predict`."""
        native = getattr(options, "native_crop", None)
        patch_mm = options.patch_mm if options.patch_mm is not None else (None if native else DEFAULT_PATCH_MM)
        if native is not None and options.patch_mm is not None:
            raise ValueError("--native-crop sets the crop in T2 pixels: it takes no --patch-mm")
        if (patch_mm is not None and patch_mm <= 0) or options.patch_size < 3 or (native is not None and native < 3):
            raise ValueError(f"--patch-mm must be > 0 and --patch-size / --native-crop >= 3, got {options.patch_mm}, "
                             f"{options.patch_size}, {native}")
        channel_set = getattr(options, "channels", None) or "t2-dwi-adc"
        return {"patch_mm": patch_mm, "patch_size": options.patch_size, "native_crop_px": native,
                "resize": "bicubic (PIL kernel)" if native else None, "locate": options.locate,
                "ijk_tolerance": options.ijk_tolerance, "channel_set": channel_set,
                "channels": [CHANNEL_NAMES[k] for k in CHANNEL_SETS[channel_set]],
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
        settings = self.case_options(options)
        seq = load_sequences(folder, {r.series_number for r in rows}, settings)
        spacing = seq.out_spacing(settings)
        examples, failures, controls = [], [], []
        for finding in sorted(findings, key=lambda f: f.fid):
            try:
                centre, dots = self._locate(finding, rows, seq.chosen, seq.volumes, settings)
            except ValueError as exc:
                failures.append((Path(finding.source), f"fid {finding.fid}: {exc}"))
                continue
            examples.append({"image": lesion_patch(seq, centre, settings), "label": finding.label,
                             "finding_id": finding.fid, "zone": finding.zone,
                             "lesion_position": np.asarray(centre, np.float32),
                             "pixel_spacing": np.array([spacing, spacing], np.float32)})
            controls.append(dots)
        if not options.no_alignment_pngs:
            self._write_alignment(case, options, seq, examples, controls)
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
        for kind in volumes:  # the sequences read: T2 and the channels'
            s, vol = chosen[kind][0], volumes[kind]
            row = mine.get(s.number)
            if row is None:
                continue
            ijk = np.asarray(layout.parse_numbers(row.ijk, 3, f"ijk of {s.label}"))
            if not inside(vol, ijk, margin=0.0):
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
        for kind in volumes:
            index = volumes[kind].physical_to_index(centre)
            if not inside(volumes[kind], index):
                raise ValueError(f"lesion centre {np.round(centre, 2).tolist()} mm lies outside the "
                                 f"{chosen[kind][0].label} image")
            dots[kind] = ijks.get(kind, np.rint(index))
        return centre, dots

    def _write_alignment(self, case, options, seq, examples, controls):
        from medtf.data.alignment import render_alignment, write_png_atomic

        out, case_hash = alignment_folder(options, case)
        for i, (example, dots) in enumerate(zip(examples, controls)):
            before = []
            for kind in seq.kinds:  # one source slice per patch channel
                volume = seq.volumes[kind]
                k = int(np.clip(np.rint(dots[kind][2]), 0, volume.array.shape[0] - 1))
                before.append((volume.array[k], (float(dots[kind][0]), float(dots[kind][1]))))
            write_png_atomic(out / f"{case_hash}-{i:04d}.png", render_alignment(before, example["image"]))


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
