"""Issue #12 item 7: `medtf export` stores the training data's fingerprint in medtf.json and `medtf predict` warns
(stderr + prediction.json) when an input is unlike it; an old medtf.json without one gives a note, not a crash.

Uses the evaluation fixtures: brachy-ct shards (train 2 plans, resampled to 2 x 2 x 4 mm, (16, 48, 48)) and a
run directory with a fixed-threshold model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import run_medtf
from tests.evaluation.conftest import decoded


@pytest.fixture(scope="module")
def exported(brachy_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ood_export")
    assert run_medtf("export", brachy_run, "--output", out, "--name", "brachy") == 0
    return out / "brachy" / "1"


@pytest.fixture(scope="module")
def test_case(brachy_data):
    """The test split's volume as stored (HU), with its geometry."""
    from medtf.io.volume import Volume

    ex = decoded(brachy_data, "test")[0]
    return Volume(ex["image"], spacing=ex["spacing"], origin=ex["origin"], direction=ex["direction"],
                  modality="CT")


def _predict(model, volume, folder, capsys, dicom=False):
    from medtf.export.writers import write_nifti
    from medtf.synth.dicom_writer import write_dicom_series

    folder.mkdir(parents=True)
    if dicom:
        source = folder / "series"
        write_dicom_series(volume, source, modality=volume.modality, patient_name="OOD^TEST", patient_id="OOD1")
    else:
        source = write_nifti(volume, folder / "input.nii.gz")
    assert run_medtf("predict", model, "--input", source, "--output", folder / "out") == 0
    err = capsys.readouterr().err
    return json.loads((folder / "out" / "prediction.json").read_text()), err


def test_fingerprint_in_medtf_json(exported, brachy_data):
    from medtf.data.manifest import read_manifest

    fp = json.loads((exported / "medtf.json").read_text())["fingerprint"]
    assert fp["modality"] == "CT" and fp["kind"] == "brachy-ct"
    assert fp["spacing"]["min"] == fp["spacing"]["max"] == [2.0, 2.0, 4.0]
    assert fp["shape"]["min"] == fp["shape"]["max"] == [16, 48, 48]
    assert fp["source"] == {"splits": ["train"], "examples": 2,
                            "of": read_manifest(brachy_data)["splits"]["train"]["num_examples"]}
    train = np.concatenate([ex["image"].ravel() for ex in decoded(brachy_data, "train")]).astype(np.float64)
    intensity = fp["intensity"]
    assert intensity["channels"] == 1
    # Percentiles of a voxel sample: they split the training voxels as percentiles should.
    p0_5, p50, p99_5 = intensity["p0_5"][0], intensity["p50"][0], intensity["p99_5"][0]
    assert (train < p0_5).mean() <= 0.01 and (train > p99_5).mean() <= 0.01
    assert 0.45 <= (train <= p50).mean() and (train < p50).mean() <= 0.55
    assert intensity["mean"][0] == pytest.approx(train.mean(), abs=0.02 * train.std())


def test_in_distribution_case_has_no_warning(exported, test_case, tmp_path, capsys):
    summary, err = _predict(exported, test_case, tmp_path / "same", capsys, dicom=True)
    assert summary["warnings"] == [] and "WARNING" not in err
    assert not [n for n in summary["notes"] if "out-of-distribution" in n]


def test_mr_like_volume_warns(exported, test_case, tmp_path, capsys):
    from medtf.io.volume import Volume

    mr = Volume(np.clip(test_case.array.astype(np.float32) * 0.3 + 300, 0, None).astype(np.int16),
                spacing=(0.9, 0.9, 1.0), origin=test_case.origin, direction=test_case.direction, modality="MR")
    summary, err = _predict(exported, mr, tmp_path / "mr", capsys, dicom=True)
    kinds = [w.split(":")[0] for w in summary["warnings"]]
    assert kinds == ["modality", "voxel spacing", "intensity"], summary["warnings"]
    assert "the input is MR, the model was trained on CT" in summary["warnings"][0]
    assert "(0.9, 0.9, 1) mm is outside (1, 1, 2)..(4, 4, 8)" in summary["warnings"][1]
    for warning in summary["warnings"]:
        assert f"medtf predict: WARNING: input unlike the model's training data: {warning}" in err


def test_rescaled_ct_warns(exported, test_case, tmp_path, capsys):
    from medtf.io.volume import Volume

    scaled = Volume((test_case.array.astype(np.float32) + 1024) / 4095, spacing=test_case.spacing,
                    origin=test_case.origin, direction=test_case.direction)
    summary, err = _predict(exported, scaled, tmp_path / "scaled", capsys)
    assert len(summary["warnings"]) == 1 and summary["warnings"][0].startswith("intensity: the input's p0.5..p99.5")
    assert "rescaled" in err


def test_old_medtf_json_without_fingerprint_gives_a_note(exported, test_case, tmp_path, capsys):
    old = tmp_path / "old" / "1"
    shutil.copytree(exported, old)
    meta = json.loads((old / "medtf.json").read_text())
    del meta["fingerprint"]
    (old / "medtf.json").write_text(json.dumps(meta))
    summary, err = _predict(old, test_case, tmp_path / "pred", capsys)
    assert summary["warnings"] == [] and "WARNING" not in err
    assert [n for n in summary["notes"] if n.startswith("no out-of-distribution check")]
