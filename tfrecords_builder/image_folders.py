"""Convert a folder-per-class tree of 2D images (e.g. Kaggle "Brain MRI Images for Brain Tumor Detection") to TFRecords.

Input layout (``--input`` is the folder holding the class folders; images may sit in sub-folders of a class)::

    <input>/no/N1.jpg  no 10.jpg  ...          class "no"  -> label 0
    <input>/yes/Y1.jpg Y10.JPG    ...          class "yes" -> label 1
    <input>/<class>/<any>/<image>.png|.jpg|.jpeg|.tif|.tiff|.dcm   (or a DICOM file without extension)

One example per image (see `medtf.data.schema.IMAGE_FOLDERS`). Classes are the folder names, sorted (or the
order of ``--classes``), recorded in the manifest's ``options.class_names``; the label is the index. Images become
uint8 (`tfrecords_builder.image_files`: 8-bit as stored, deeper ones scaled to 0..255), then optionally cropped
to the bounding box of the pixels brighter than ``--black-threshold`` (``--crop-black-margin``), converted to one
luminance channel (``--grayscale``; else RGB, gray images repeated) and resized bicubically (``--resize H[,W]``).

The split unit: with ``--patient-regex`` the patient ID is taken from each file name (the group named
``patient``, else group 1, else the whole match) and all images of a patient go to one split, its ID
pseudonymised everywhere; without it every image is its own unit (the manifest's ``options.split_unit`` says
so), which is right only when no patient has two images. Splits are stratified by class.

Bad input is recorded in the manifest's ``failures`` and the rest converts: a file that is not an image, an
unreadable or corrupt image, an all-black image with ``--crop-black-margin``, a class folder without images (left
out of the classes), a file name the ``--patient-regex`` does not match. Hidden files (``.*``) are ignored.

Usage::

    medtf convert image-folders --input data/brain_tumor --output shards/brain --grayscale --resize 65 \\
        --crop-black-margin
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

from medtf.data import deid
from medtf.data.schema import IMAGE_FOLDERS
from medtf.io.errors import InputError
from tfrecords_builder import image_files
from tfrecords_builder.engine import Case, CaseOutput, Converter, converter_main

log = logging.getLogger("medtf.convert")


def _visible_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def scan(input_dir: Path, classes: str | None):
    """``(class_names, {class: [image files]}, failures)`` of a folder-per-class tree (see the module docstring).

    Raises:
        ValueError: ``--classes`` names a class without a folder, or there is no class with images.
    """
    folders = {p.name: p for p in sorted(input_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes else sorted(folders)
    missing = [c for c in wanted if c not in folders]
    if missing:
        raise ValueError(f"--classes {missing} have no folder under {input_dir} (folders: {sorted(folders)})")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"--classes names a class twice: {wanted}")
    failures, images = [], {}
    for name in sorted(set(folders) - set(wanted)):
        failures.append((name, f"folder {name!r} is not one of --classes {wanted}; skipped"))
    for name in wanted:
        found = []
        for path in _visible_files(folders[name]):
            if image_files.image_type(path) is None:
                failures.append((str(path.relative_to(input_dir)),
                                 f"in class {name!r}: not an image file (PNG, JPG, TIFF or DICOM expected); skipped"))
            else:
                found.append(path)
        if found:
            images[name] = found
        else:
            failures.append((name, f"class folder {name!r} holds no image files; left out of the classes"))
    if not images:
        raise ValueError(f"{input_dir}: no class folder with images (expected <input>/<class>/<image files>)")
    return [c for c in wanted if c in images], images, failures


def _patient_of(regex: re.Pattern, name: str) -> str | None:
    match = regex.search(name)
    if match is None:
        return None
    if "patient" in regex.groupindex:
        return match.group("patient")
    return match.group(1) if regex.groups else match.group(0)


def _pseudonymised(regex: re.Pattern, rel: str, hasher) -> str:
    name = Path(rel).name
    patient = _patient_of(regex, name)
    return rel if not patient else str(Path(rel).with_name(name.replace(patient, hasher(patient))))


def _size(text: str | None):
    if not text:
        return None
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--resize takes H or H,W in pixels, got {text!r}") from None
    if len(values) not in (1, 2) or min(values) < 2:
        raise ValueError(f"--resize takes H or H,W (each >= 2), got {text!r}")
    return [values[0], values[-1]]


def _settings(options) -> dict:
    """The options that change what an image converts to (the manifest's ``options`` besides the classes)."""
    if not 0 <= options.black_threshold < 255:
        raise ValueError(f"--black-threshold must be in 0..254, got {options.black_threshold}")
    regex = options.patient_regex
    if regex:
        try:
            re.compile(regex)
        except re.error as exc:
            raise ValueError(f"--patient-regex {regex!r} is not a regular expression: {exc}") from None
    unit = (f"patient (ID from the file name by --patient-regex {regex!r})" if regex else
            "image (no --patient-regex: each image is its own split unit, as if from its own patient)")
    return {"grayscale": bool(options.grayscale), "channels": 1 if options.grayscale else 3,
            "resize": _size(options.resize), "crop_black_margin": bool(options.crop_black_margin),
            "black_threshold": options.black_threshold, "patient_regex": regex, "split_unit": unit,
            "intensity": "uint8: 8-bit images as stored; deeper ones scaled to 0..255 (DICOM: its window, else "
                         "each image's min..max)"}


class ImageFoldersConverter(Converter):
    kind = "image-folders"
    schema = IMAGE_FOLDERS
    stratify_by = "class (folder name) of the unit's images"
    stratify_at_discovery = True  # classes are known from the folders

    def add_arguments(self, parser):
        group = parser.add_argument_group("image-folders options")
        group.add_argument("--classes", default=None,
                           help="comma-separated class folders in label order (default: all folders, sorted)")
        group.add_argument("--grayscale", action="store_true", help="one luminance channel (default: RGB)")
        group.add_argument("--resize", default=None, metavar="H[,W]", help="resize to H x W pixels (bicubic)")
        group.add_argument("--crop-black-margin", action="store_true",
                           help="crop to the bounding box of pixels brighter than --black-threshold (before resize)")
        group.add_argument("--black-threshold", type=int, default=15,
                           help="0..254: pixels at or below it count as black margin (default %(default)s)")
        group.add_argument("--patient-regex", default=None,
                           help="patient ID from each file name (group 'patient', else group 1, else the match); "
                                "without it each image is its own split unit")

    def case_options(self, options) -> dict:
        settings = _settings(options)
        classes, _, _ = scan(Path(options.input), options.classes)
        return {"class_names": classes, **settings}

    def discover(self, input_dir: Path, options):
        settings = self.case_options(options)
        classes, images, failures = scan(input_dir, options.classes)
        regex = re.compile(settings["patient_regex"]) if settings["patient_regex"] else None
        if regex:  # a skipped file's name may hold a patient ID too: the engine writes it, so pseudonymise it here
            hasher = deid.IdHasher(deid.load_or_create_key(options.output, options.id_salt, options.id_key_file))
            failures = [(_pseudonymised(regex, rel, hasher), reason) for rel, reason in failures]
        units: dict[str, list] = {}
        for label, name in enumerate(classes):
            for path in images[name]:
                rel = str(path.relative_to(input_dir))
                unit = _patient_of(regex, path.name) if regex else rel
                if unit is None:
                    failures.append((rel, "file name does not match --patient-regex; skipped"))
                    continue
                units.setdefault(unit, []).append((label, name, rel, path))
        cases = []
        for unit, items in sorted(units.items()):
            stratum = "+".join(sorted({name for _, name, _, _ in items}))
            if regex:
                cases.append(Case(key=unit, patient_id=unit, paths=tuple(p for *_, p in items), raw_ids=(unit,),
                                  info=tuple(items), stratum=stratum))
            else:  # the file is the unit: its path is the key, not an ID to scrub from messages
                cases.append(Case(key=unit, patient_id=f"image:{unit}", paths=(items[0][3],), info=tuple(items),
                                  stratum=stratum))
        return cases, failures

    def convert_case(self, case: Case, options) -> CaseOutput:
        settings = _settings(options)  # not case_options: that rescans the whole tree for its class names
        examples, failures = [], []
        for label, name, rel, path in case.info:
            try:
                examples.append(self._example(path, label, name, settings))
            except InputError as exc:
                if len(case.info) == 1 and not settings["patient_regex"]:
                    raise InputError(None, exc.reason) from None  # recorded under the case key: its path
                failures.append((None, f"{rel}: {exc.reason}"))
        return CaseOutput(examples=examples, stratum=case.stratum, failures=failures)

    @staticmethod
    def _example(path: Path, label: int, name: str, settings: dict) -> dict:
        import numpy as np

        image = image_files.read_2d(path)
        source_shape = image.shape[:2]
        box = (0, 0, *source_shape)
        if settings["crop_black_margin"]:
            try:
                image, box = image_files.crop_black_margin(image, settings["black_threshold"])
            except ValueError as exc:
                raise InputError(path, f"all black: {exc} (--crop-black-margin)") from None
        image = image_files.to_channels(image, settings["grayscale"])
        if settings["resize"]:
            image = image_files.resize(image, tuple(settings["resize"]))
        return {"image": np.ascontiguousarray(image, np.uint8), "label": label, "class_name": name,
                "source_shape": np.asarray(source_shape, np.int64), "crop_box": np.asarray(box, np.int64)}


def main(argv=None) -> int:
    return converter_main(ImageFoldersConverter(), argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
