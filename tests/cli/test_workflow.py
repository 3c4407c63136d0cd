"""The user's path through the real `medtf` entry point on tiny data: synth -> convert -> train -> evaluate ->
export -> predict (DICOM in; NIfTI, DICOM SEG, overlays out) -> catheter reconstruction, as `medtf demo` runs it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TEST_SALT, run_medtf

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "brachy_unet3d.yaml"
TINY = ["model.args.depth=2", "model.args.base_filters=4", "train.epochs=2", "train.steps_per_epoch=2",
        "data.batch_size=1", "data.patch_size.size=[16,32,32]", "train.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    from medtf.synth.brachy_ct import generate_brachy_ct

    root = tmp_path_factory.mktemp("workflow")
    source, shards, run = root / "src", root / "shards", root / "run"
    generate_brachy_ct(source, cases=4, seed=5, shape=(32, 96, 96), n_catheters=(3, 4))
    assert run_medtf("convert", "brachy-ct", "--input", source, "--output", shards, "--split", "0.5,0.25,0.25",
                     "--spacing", "2,2,2", "--id-salt", TEST_SALT) == 0
    overrides = [a for o in [f"data.dir={shards}", *TINY] for a in ("--set", o)]
    assert run_medtf("train", EXPERIMENT, *overrides, "--run-dir", run) == 0
    return root, source, shards, run


def test_train_evaluate_export_predict(workflow, tmp_path):
    import pydicom

    from medtf.cli.demo import held_out_case, reconstruct_prediction
    from medtf.io import read_dicom_series, read_image

    root, source, shards, run = workflow
    assert (run / "checkpoints" / "best.keras").is_file() and len((run / "history.csv").read_text().splitlines()) == 3

    assert run_medtf("evaluate", run, "--split", "test") == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    with open(run / "eval-test" / "per_case.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == manifest["splits"]["test"]["num_examples"] == 1
    assert manifest["splits"]["test"]["patients"] == [r["patient_id"] for r in rows]
    summary = json.loads((run / "eval-test" / "summary.json").read_text())
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(float(rows[0]["dice"]))
    assert int(rows[0]["catheters_found"]) + int(rows[0]["catheters_missed"]) == len(
        manifest_catheters(shards, rows[0]["patient_id"]))

    assert run_medtf("export", run) == 0
    version = run / "export" / "unet3d" / "1"
    assert (version / "saved_model.pb").is_file()
    assert json.loads((version / "medtf.json").read_text())["preprocess"] == [
        {"name": "window", "center": 0, "width": 2000}]  # experiments/brachy_unet3d.yaml

    case_dir, pseudonym = held_out_case(source, shards, id_salt=TEST_SALT)
    assert pseudonym in manifest["splits"]["test"]["patients"]
    out = tmp_path / pseudonym
    assert run_medtf("predict", run / "export" / "unet3d", "--input", case_dir / "CT", "--output", out) == 0
    ct, mask = read_dicom_series(case_dir / "CT"), read_image(out / "mask.nii.gz")
    assert mask.array.shape == ct.array.shape  # the native grid, not the 2 mm training grid
    np.testing.assert_allclose(mask.spacing, ct.spacing, atol=1e-5)
    np.testing.assert_allclose(mask.origin, ct.origin, atol=1e-4)
    seg = pydicom.dcmread(out / "seg.dcm")
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.metadata["SeriesInstanceUID"]
    assert sorted(out.glob("*.png"))

    # Two epochs of two steps leave the tiny U-Net predicting a flood (about half the volume): reconstruction
    # refuses it with a reason instead of tracking hundreds of blobs into a plan of hundreds of channels (the
    # demo's trained model and tests/rt cover plans written from real predictions).
    fraction = float((mask.array > 0).mean())
    catheters = reconstruct_prediction(case_dir, out)
    s = catheters["summary"]
    assert s["found"] + s["missed"] == catheters["planned"] == len(manifest_catheters(shards, pseudonym))
    if fraction > 0.05:
        assert catheters["plan"] is None and "not a catheter segmentation" in catheters["error"]
        assert not (out / "RP.reconstructed.dcm").exists() and s["found"] == 0
        assert run_medtf("reconstruct", out / "mask.nii.gz", "--ct", case_dir / "CT", "--output",
                         tmp_path / "rec") == 2
    else:
        assert catheters["json"].is_file() and catheters["plan"].is_file()
        plan = pydicom.dcmread(catheters["plan"])
        assert plan.Modality == "RTPLAN" and plan.FrameOfReferenceUID == seg.FrameOfReferenceUID

    from medtf.cli.demo import report

    history = {"loss": [1.0, 0.5], "val_dice": [0.1, 0.25]}
    text = report({"history": history}, summary, catheters, run, version.parent, out, TINY, 1.5)
    assert "best val Dice 0.250 over 2 epochs" in text
    if s["tip_error_mm"] is None:  # an untrained tiny model may match no catheter: no distances to print
        assert "tip error n/a" in text
    assert f"Dice {summary['metrics']['dice']['mean']:.3f}" in text
    assert f"catheters found {s['found']}/{catheters['planned']}" in text
    assert f"tensorboard --logdir {run / 'logs'}" in text and "finished in 1.5 min" in text


def manifest_catheters(shards: Path, patient_id: str) -> list:
    """The planned catheters of one patient, decoded from the shards (offsets are row splits)."""
    from medtf.data import make_dataset

    for ex in make_dataset(shards, "test", batch_size=1, training=False, repeat=False, output="dict"):
        if ex["patient_id"][0].numpy().decode() == patient_id:
            offsets = ex["catheter_offsets"][0].numpy()
            return [ex["catheter_points"][0].numpy()[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    raise AssertionError(f"{patient_id} not in the test split")
