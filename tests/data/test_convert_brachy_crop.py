"""Issue #13 defect 4: brachy-ct `--crop-margin-mm` crops the training split only, through the real `medtf` entry
point on synthetic cases (resume/`--num-tasks` byte-identity of the split-dependent crop: tests/data/test_convert_tasks.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow as tf

from medtf.data.decoder import make_decoder
from medtf.data.deid import IdHasher
from medtf.data.manifest import read_manifest, shard_paths
from medtf.data.schema import BRACHY_CT
from medtf.io.dicom_series import read_dicom_series
from medtf.rt import rasterize_polylines, read_brachy_plan
from medtf.synth.brachy_ct import brachy_case_identity
from tests.conftest import TEST_SALT, run_medtf

CASES, SEED = 4, 11


@pytest.fixture(scope="module")
def brachy_source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("brachy_crop") / "src"
    assert run_medtf("synth", "brachy-ct", "--out", src, "--cases", CASES, "--seed", SEED) == 0
    return src


def _plan_file(folder: Path) -> Path:
    return next(p for p in folder.glob("*.dcm") if pydicom.dcmread(p, stop_before_pixels=True).Modality == "RTPLAN")


def _examples_by_split(out: Path) -> dict[str, dict[str, dict]]:
    """{split: {patient pseudonym: decoded example}}."""
    manifest = read_manifest(out)
    result = {}
    for split in manifest["splits"]:
        ds = tf.data.TFRecordDataset([str(p) for p in shard_paths(out, manifest, split)],
                                     compression_type=manifest["compression"] or "")
        result[split] = {e["patient_id"].decode(): e for e in ds.map(make_decoder(BRACHY_CT)).as_numpy_iterator()}
    return result


def test_crop_applies_to_the_training_split_only(brachy_source, tmp_path):
    """Issue #13 defect 4: --crop-margin-mm must not crop val/test to their own plan's catheters (evaluation would
    never see false positives away from them): those keep the whole CT, training examples are cropped as before."""
    from medtf.rt import catheter_bounding_box

    from tfrecords_builder.brachy_ct import crop

    out = tmp_path / "cropped"
    assert run_medtf("convert", "brachy-ct", "--input", brachy_source, "--output", out, "--id-salt", TEST_SALT,
                     "--split", "0.5,0.25,0.25", "--crop-margin-mm", "6", "--catheter-radius-mm", "1.0") == 0
    by_split = _examples_by_split(out)
    split_of = {patient: split for split, examples in by_split.items() for patient in examples}
    examples = {patient: e for split_examples in by_split.values() for patient, e in split_examples.items()}
    assert sorted(split_of.values()) == ["test", "train", "train", "val"]
    hasher = IdHasher(TEST_SALT.encode())
    for folder in sorted(brachy_source.iterdir()):
        patient = hasher(brachy_case_identity(int(folder.name[-3:]) - 1, SEED).patient_id)
        example, ct = examples[patient], read_dicom_series(folder / "CT")
        plan = read_brachy_plan(_plan_file(folder))
        if split_of[patient] == "train":  # cropped exactly as before: to the catheters' box plus the margin
            expected = crop(ct, catheter_bounding_box(plan.polylines, ct, 6.0))
            assert example["image"].size < 0.5 * ct.array.size  # the catheters occupy a small region
        else:  # the whole body extent, and the plan's mask on it
            expected = ct
        np.testing.assert_array_equal(example["image"], expected.array.astype(np.int16))
        np.testing.assert_allclose(example["origin"], expected.origin, atol=1e-4)
        np.testing.assert_array_equal(example["mask"], rasterize_polylines(plan.polylines, expected, 1.0)[0])
