"""`medtf reconstruct`: a catheter mask on a synthetic planning CT -> catheters.json + a valid RT Plan + a matching
report in mm against the synthetic plan, through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medtf.rt import match_catheters, rasterize_polylines, read_brachy_plan, read_catheters_json
from tests.conftest import run_medtf

N_CATHETERS = 4


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(CT folder, plan file, planned BrachyPlan, CT Volume) of one synthetic patient with 4 needles."""
    from medtf.io import read_dicom_series
    from medtf.synth.brachy_ct import generate_brachy_case

    root = tmp_path_factory.mktemp("reconstruct")
    ct_dir, plan_path = generate_brachy_case(root / "case", 0, seed=3, shape=(32, 80, 80),
                                             n_catheters=(N_CATHETERS, N_CATHETERS))
    plan = pydicom.dcmread(plan_path)  # channel numbers as a TPS may give them: not 1..n
    for channel, number in zip(plan.ApplicationSetupSequence[0].ChannelSequence, (3, 5, 8, 13)):
        channel.ChannelNumber = number
    plan.save_as(plan_path)
    return ct_dir, plan_path, read_brachy_plan(plan_path), read_dicom_series(ct_dir)


def _mask_file(path: Path, ct, polylines) -> Path:
    """A perfect prediction of ``polylines`` (1.25 mm tubes) on the CT grid, as `medtf predict` writes it."""
    mask, _ = rasterize_polylines(polylines, ct, 1.25)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(ct.with_array(mask.astype(np.uint8)).to_sitk(), str(path))
    return path


def test_reconstruct_matches_the_plan_in_mm(case, tmp_path, dciodvfy, capsys):
    ct_dir, plan_path, planned, ct = case
    mask = _mask_file(tmp_path / "mask.nii.gz", ct, planned.polylines)
    out = tmp_path / "out"
    assert run_medtf("reconstruct", mask, "--ct", ct_dir, "--plan", plan_path, "--output", out) == 0
    stdout = capsys.readouterr().out
    assert f"found {N_CATHETERS}/{N_CATHETERS} (missed 0, spurious 0)" in stdout, stdout

    report = json.loads((out / "reconstruction.json").read_text())
    match = report["match"]
    assert (report["catheters"], match["found"], match["missed"], match["spurious"]) == (N_CATHETERS,) * 2 + (0, 0)
    assert match["mean_distance_mm"] < 0.5 and match["max_distance_mm"] < 2.0 and match["tip_error_mm"] < 2.0
    assert sorted(c["channel"] for c in match["channels"]) == [3, 5, 8, 13]
    # The report's numbers are those of an independent match of the written JSON against the plan.
    catheters = read_catheters_json(out / "catheters.json")
    again = match_catheters(catheters, planned.polylines).summary()
    for key in ("mean_distance_mm", "max_distance_mm", "tip_error_mm"):
        assert match[key] == pytest.approx(again[key], abs=1e-9), key

    rebuilt = read_brachy_plan(out / "RP.reconstructed.dcm")
    assert sorted(c.channel_number for c in rebuilt.catheters) == [3, 5, 8, 13]
    for rec, ref, *_ in match_catheters(rebuilt.polylines, planned.polylines).pairs:
        assert rebuilt.catheters[rec].channel_number == planned.catheters[ref].channel_number
    report_dcm = dciodvfy(out / "RP.reconstructed.dcm")
    assert (report_dcm.errors, report_dcm.warnings) == ([], []), report_dcm.output
    ds = pydicom.dcmread(out / "RP.reconstructed.dcm")
    source = pydicom.dcmread(plan_path)
    assert ds.TreatmentMachineSequence[0].TreatmentMachineName == "SYNTH_HDR"  # the source plan's machine
    assert {float(c.SourceApplicatorStepSize) for c in ds.ApplicationSetupSequence[0].ChannelSequence} == {5.0}
    assert ds.PatientID == source.PatientID and ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert source.PatientID not in (out / "reconstruction.json").read_text()


def test_a_missed_catheter_from_a_prediction_folder(case, tmp_path):
    ct_dir, plan_path, planned, ct = case
    prediction = tmp_path / "prediction"
    _mask_file(prediction / "mask.nii.gz", ct, planned.polylines[1:])  # the network missed channel 3
    assert run_medtf("reconstruct", prediction, "--ct", ct_dir, "--plan", plan_path, "--output", prediction) == 0
    match = json.loads((prediction / "reconstruction.json").read_text())["match"]
    assert (match["found"], match["missed"], match["spurious"], match["planned"]) == (3, 1, 0, 4)
    assert match["missed_channels"] == [3]
    assert sorted(c.channel_number for c in read_brachy_plan(prediction / "RP.reconstructed.dcm").catheters) == \
        [5, 8, 13]


def test_without_a_plan(case, tmp_path, dciodvfy):
    ct_dir, _, planned, ct = case
    mask = _mask_file(tmp_path / "mask.nii.gz", ct, planned.polylines)
    assert run_medtf("reconstruct", mask, "--ct", ct_dir, "--output", tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "reconstruction.json").read_text())
    assert "match" not in report and report["channel_numbers"] == [1, 2, 3, 4]
    assert len(read_catheters_json(tmp_path / "out" / "catheters.json")) == N_CATHETERS
    assert dciodvfy(tmp_path / "out" / "RP.reconstructed.dcm").errors == []
    ds = pydicom.dcmread(tmp_path / "out" / "RP.reconstructed.dcm")
    assert ds.TreatmentMachineSequence[0].TreatmentMachineName == ""  # documented default: unknown


def test_mistakes_are_one_line_and_exit_2(case, tmp_path, capsys):
    ct_dir, plan_path, planned, ct = case
    cropped = tmp_path / "cropped.nii.gz"
    sitk.WriteImage(ct.with_array(np.zeros((10, 80, 80), np.uint8)).to_sitk(), str(cropped))
    other = pydicom.dcmread(plan_path)
    other.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
    other.save_as(tmp_path / "RP.other.dcm")
    mask = _mask_file(tmp_path / "mask.nii.gz", ct, planned.polylines)
    cases = [
        ((tmp_path / "nothing.nii.gz", "--ct", ct_dir), "mask does not exist"),
        ((ct_dir, "--ct", ct_dir), "no mask.nii.gz in the folder"),
        ((cropped, "--ct", ct_dir), "differs from the CT's"),
        ((mask, "--ct", ct_dir, "--plan", tmp_path / "RP.other.dcm"), "does not belong to this image"),
        ((mask, "--ct", tmp_path / "no-ct"), "CT folder does not exist"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert run_medtf("reconstruct", *args, "--output", tmp_path / "x") == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "x" / "RP.reconstructed.dcm").exists()
