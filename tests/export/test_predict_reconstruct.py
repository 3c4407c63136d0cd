"""`medtf predict --reconstruct`: an exported brachy-ct model on a synthetic planning CT writes the catheters and a
valid RT Plan next to the mask, matched against the synthetic plan."""

from __future__ import annotations

import json

import pytest

from medtf.rt import read_brachy_plan, read_catheters_json
from tests.conftest import run_medtf


@pytest.fixture(scope="module")
def brachy_case(tmp_path_factory):
    from medtf.synth.brachy_ct import generate_brachy_case

    # The old bright-needle look: this test is about predict + reconstruct plumbing with a known-output model.
    ct_dir, plan_path = generate_brachy_case(tmp_path_factory.mktemp("case") / "case", 0, seed=3,
                                             shape=(32, 80, 80), n_catheters=(4, 4), realism="bright-needles")
    return ct_dir, plan_path


def test_predict_reconstruct_writes_catheters_and_a_valid_plan(pointwise3d_model_dir, brachy_case, tmp_path,
                                                               dciodvfy, capsys):
    # The pointwise model predicts HU > 650: exactly the synthetic needles (1500 HU) in soft tissue.
    ct_dir, plan_path = brachy_case
    out = tmp_path / "pred"
    assert run_medtf("predict", pointwise3d_model_dir, "--input", ct_dir, "--output", out, "--overlays", 0,
                     "--reconstruct", "--plan", plan_path) == 0
    assert "found 4/4 (missed 0, spurious 0)" in capsys.readouterr().out
    match = json.loads((out / "reconstruction.json").read_text())["match"]
    assert match["mean_distance_mm"] < 0.5 and match["tip_error_max_mm"] < 2.0, match
    assert len(read_catheters_json(out / "catheters.json")) == 4
    planned = read_brachy_plan(plan_path)
    assert sorted(c.channel_number for c in read_brachy_plan(out / "RP.reconstructed.dcm").catheters) == \
        sorted(c.channel_number for c in planned.catheters)
    report = dciodvfy(out / "RP.reconstructed.dcm")
    assert report.errors == [] and report.warnings == [], report.output
    assert (out / "mask.nii.gz").is_file() and (out / "seg.dcm").is_file()


def test_predict_reconstruct_refuses_what_it_cannot_do(pointwise2d_model_dir, pointwise3d_model_dir, brachy_case,
                                                       tmp_path, capsys):
    ct_dir, plan_path = brachy_case
    cases = [
        ((pointwise2d_model_dir, "--input", ct_dir, "--reconstruct"), "kind brachy-ct"),
        ((pointwise3d_model_dir, "--input", plan_path, "--reconstruct"), "DICOM CT series folder"),
        ((pointwise3d_model_dir, "--input", ct_dir, "--plan", plan_path), "--plan needs --reconstruct"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert run_medtf("predict", *args, "--output", tmp_path / "x") == 2, args
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before predicting
