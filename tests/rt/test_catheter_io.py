"""Catheter JSON and reconstructed RT Plan: round trips, frame of reference, identity taken from the CT."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from medtf.io.volume import Volume
from medtf.rt import read_brachy_plan, read_catheters_json, write_catheters_json, write_reconstructed_plan
from medtf.synth.dicom_writer import write_dicom_series

CT_FOR = "1.2.826.0.1.3680043.8.498.4242"
CT_STUDY = "1.2.826.0.1.3680043.8.498.4243"
IDENTITY = dict(patient_name="SYNTH^RECON^007", patient_id="SYNRC007", birth_date="19581224")


def _catheters():
    s = np.linspace(0.0, 1.0, 41)[:, None]
    a = np.array([-20.125, 3.5, -150.0]) + s * np.array([40.0, 2.0, 1.0]) + 4 * s * (1 - s) * np.array([0, 2.0, 0])
    b = np.array([[15.3, -7.25, -148.0], [0.1, -6.0, -147.5], [-14.7, -5.5, -147.0]])
    return [a, b]


@pytest.fixture(scope="module")
def ct_header(tmp_path_factory) -> pydicom.Dataset:
    folder = tmp_path_factory.mktemp("ct")
    vol = Volume(np.zeros((3, 8, 8), np.int16), spacing=(1.0, 1.0, 2.0), origin=(-4.0, -4.0, -152.0))
    files = write_dicom_series(vol, folder, study_uid=CT_STUDY, frame_of_reference_uid=CT_FOR, **IDENTITY)
    return pydicom.dcmread(files[0], stop_before_pixels=True)


def test_json_round_trip(tmp_path):
    cats = _catheters()
    path = write_catheters_json(tmp_path / "out" / "catheters.json", cats, frame_of_reference_uid=CT_FOR,
                                step_mm=1.0, model="unet3d_small", threshold=0.5)
    back = read_catheters_json(path)
    assert len(back) == 2
    for got, want in zip(back, cats):
        np.testing.assert_array_equal(got, want)  # JSON floats round-trip exactly
    doc = json.loads(path.read_text())
    assert (doc["version"], doc["units"], doc["coordinate_system"]) == (1, "mm", "LPS")
    assert doc["frame_of_reference_uid"] == CT_FOR and doc["step_mm"] == 1.0
    assert doc["metadata"] == {"model": "unet3d_small", "threshold": 0.5}
    assert [c["number"] for c in doc["catheters"]] == [1, 2]
    assert doc["catheters"][1]["tip"] == [15.3, -7.25, -148.0]
    seg = np.linalg.norm(np.diff(cats[1], axis=0), axis=1).sum()
    assert doc["catheters"][1]["length_mm"] == pytest.approx(seg, abs=1e-4)
    assert sorted(p.name for p in path.parent.iterdir()) == ["catheters.json"]  # no temporary file left
    with pytest.raises(ValueError, match="catheter 0"):
        write_catheters_json(tmp_path / "bad.json", [np.zeros((3, 2))])


def test_reconstructed_plan_round_trip_and_identity(tmp_path, ct_header, capsys):
    cats = _catheters()
    path = write_reconstructed_plan(tmp_path / "RP.recon.dcm", cats, reference_ct=ct_header)
    plan = read_brachy_plan(path)
    assert plan.frame_of_reference_uid == CT_FOR
    assert len(plan.polylines) == 2
    for got, want in zip(plan.polylines, cats):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-3)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "RTPLAN" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.5"
    assert ds.FrameOfReferenceUID == ct_header.FrameOfReferenceUID
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID", "StudyDate"):
        assert ds.data_element(keyword).value == ct_header.data_element(keyword).value, keyword
    assert ds.StudyInstanceUID == CT_STUDY and ds.PatientID == "SYNRC007"
    assert ds.SeriesInstanceUID != ct_header.SeriesInstanceUID
    assert ds.RTPlanGeometry == "TREATMENT_DEVICE" and "ReferencedStructureSetSequence" not in ds
    assert ds.ApprovalStatus == "UNAPPROVED" and ds.BrachyTreatmentTechnique == "INTERSTITIAL"
    assert [int(c.ChannelNumber) for c in ds.ApplicationSetupSequence[0].ChannelSequence] == [1, 2]
    again = write_reconstructed_plan(tmp_path / "RP.again.dcm", cats, reference_ct=ct_header)
    assert pydicom.dcmread(again).SOPInstanceUID != ds.SOPInstanceUID  # a new instance every time
    out = capsys.readouterr()
    assert "SYNRC007" not in out.out + out.err and "RECON" not in out.out + out.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RP.again.dcm", "RP.recon.dcm"]


def test_reconstructed_plan_options(tmp_path, ct_header):
    cats = _catheters()
    ss_uid = "1.2.826.0.1.3680043.8.498.999"
    path = write_reconstructed_plan(tmp_path / "a.dcm", cats, reference_ct=ct_header, dwell_step_mm=5.0,
                                    referenced_structure_set_uid=ss_uid)
    ds = pydicom.dcmread(path)
    assert ds.RTPlanGeometry == "PATIENT"
    assert ds.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == ss_uid
    pts = read_brachy_plan(path).polylines[0]
    assert len(pts) == 10 and np.linalg.norm(pts[1] - pts[0]) == pytest.approx(5.0, abs=1e-2)  # chord of arc
    # No CT header: the frame of reference is required and patient attributes stay empty (no placeholders).
    path = write_reconstructed_plan(tmp_path / "b.dcm", cats, frame_of_reference_uid=CT_FOR)
    ds = pydicom.dcmread(path)
    assert ds.FrameOfReferenceUID == CT_FOR
    assert (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.PatientSex) == ("", "", "", "")
    with pytest.raises(ValueError, match="FrameOfReferenceUID"):
        write_reconstructed_plan(tmp_path / "c.dcm", cats)
    with pytest.raises(ValueError, match="differs"):
        write_reconstructed_plan(tmp_path / "d.dcm", cats, reference_ct=ct_header, frame_of_reference_uid="1.2.3")
    with pytest.raises(ValueError, match="at least one"):
        write_reconstructed_plan(tmp_path / "e.dcm", [], reference_ct=ct_header)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.dcm", "b.dcm"]


def test_reconstructed_plan_writes_the_given_channel_numbers(tmp_path, ct_header):
    path = write_reconstructed_plan(tmp_path / "RP.dcm", _catheters(), reference_ct=ct_header, channel_numbers=[9, 3])
    assert [c.channel_number for c in read_brachy_plan(path).catheters] == [9, 3]
    for bad in ([3, 3], [1], [0, 2]):
        with pytest.raises(ValueError, match="channel numbers"):
            write_reconstructed_plan(tmp_path / "bad.dcm", _catheters(), reference_ct=ct_header, channel_numbers=bad)


def test_reconstructed_plan_is_valid_dicom_with_documented_defaults(tmp_path, ct_header, dciodvfy):
    """No source plan: dciodvfy finds nothing; unknown machine (empty, type 2), PERINEAL setup, the points' step."""
    path = write_reconstructed_plan(tmp_path / "RP.dcm", _catheters(), reference_ct=ct_header)
    report = dciodvfy(path)
    assert (report.errors, report.warnings) == ([], []), report.output
    ds = pydicom.dcmread(path)
    assert ds.TreatmentMachineSequence[0].TreatmentMachineName == ""
    setup = ds.ApplicationSetupSequence[0]
    assert setup.ApplicationSetupType == "PERINEAL"
    channels = setup.ChannelSequence
    assert [c.SourceMovementType for c in channels] == ["STEPWISE", "STEPWISE"]
    # the median spacing of each catheter's points: ~1 mm along the curve, 15.04 mm between the 3 points of b
    assert [float(c.SourceApplicatorStepSize) for c in channels] == pytest.approx([1.0, 15.04], abs=0.01)
    assert all(c.ReferencedROINumber is None for c in channels)  # present, zero length


def test_reconstructed_plan_carries_the_source_plans_machine_and_applicators(tmp_path, ct_header, dciodvfy):
    from medtf.rt import write_brachy_plan

    source_path = write_brachy_plan(tmp_path / "RP.source.dcm", _catheters(), frame_of_reference_uid=CT_FOR,
                                    channel_numbers=[4, 6])
    source = pydicom.dcmread(source_path)
    source.TreatmentMachineSequence[0].TreatmentMachineName = "Flexitron 1"
    source.SourceSequence[0].ReferenceAirKermaRate = 30000.0
    source.ApplicationSetupSequence[0].ApplicationSetupType = "SYED_NEBLETT"
    for ch, app_id in zip(source.ApplicationSetupSequence[0].ChannelSequence, ("ProGuide 6F", "ProGuide 5F")):
        ch.SourceApplicatorStepSize, ch.SourceApplicatorID, ch.ChannelLength = 2.5, app_id, 1200.0
    source.save_as(source_path)

    # catheter 0 matched channel 6, catheter 1 is new (7): it gets channel 4's (the first) applicator kind
    path = write_reconstructed_plan(tmp_path / "RP.dcm", _catheters(), reference_ct=ct_header,
                                    channel_numbers=[6, 7], source_plan=source_path)
    report = dciodvfy(path)
    assert (report.errors, report.warnings) == ([], []), report.output
    ds = pydicom.dcmread(path)
    assert ds.TreatmentMachineSequence[0].TreatmentMachineName == "Flexitron 1"
    assert float(ds.SourceSequence[0].ReferenceAirKermaRate) == 30000.0
    assert ds.ApplicationSetupSequence[0].ApplicationSetupType == "SYED_NEBLETT"
    six, seven = ds.ApplicationSetupSequence[0].ChannelSequence
    assert (six.ChannelNumber, six.SourceApplicatorID, float(six.SourceApplicatorStepSize)) == (6, "ProGuide 5F", 2.5)
    assert (seven.ChannelNumber, float(seven.SourceApplicatorStepSize), float(seven.ChannelLength)) == (7, 2.5, 1200)
    assert seven.SourceApplicatorID == "NEEDLE07" and seven.SourceApplicatorNumber == 7  # its own identifiers
    assert ds.PatientID == ct_header.PatientID  # identity still from the CT, not from the source plan


def test_demo_reconstruction_maps_catheters_back_to_the_plans_channels(tmp_path):
    """The demo's reconstructed plan numbers each found catheter like the planned one it matches."""
    import SimpleITK as sitk

    from medtf.cli.demo import reconstruct_prediction
    from medtf.io import read_dicom_series
    from medtf.rt import match_catheters, rasterize_polylines
    from medtf.synth.brachy_ct import generate_brachy_case

    case = tmp_path / "case"
    ct_dir, plan_path = generate_brachy_case(case, 0, seed=3, shape=(32, 80, 80), n_catheters=(6, 6))
    plan = pydicom.dcmread(plan_path)
    numbers = [2, 3, 5, 7, 11, 13]
    for channel, number in zip(plan.ApplicationSetupSequence[0].ChannelSequence, numbers):
        channel.ChannelNumber = number
    plan.save_as(plan_path)
    planned = read_brachy_plan(plan_path)
    ct = read_dicom_series(ct_dir)
    mask, _ = rasterize_polylines(planned.polylines, ct, 1.25)  # a perfect prediction
    (tmp_path / "prediction").mkdir()
    sitk.WriteImage(ct.with_array(mask).to_sitk(), str(tmp_path / "prediction" / "mask.nii.gz"))
    result = reconstruct_prediction(case, tmp_path / "prediction")
    assert result["summary"]["found"] == 6 and result["summary"]["spurious"] == 0
    rebuilt = read_brachy_plan(result["plan"])
    pairs = match_catheters(rebuilt.polylines, planned.polylines).pairs
    assert len(pairs) == 6
    for rec, ref, *_ in pairs:
        assert rebuilt.catheters[rec].channel_number == planned.catheters[ref].channel_number
    assert sorted(c.channel_number for c in rebuilt.catheters) == numbers


def test_synth_writer_is_a_re_export():
    from medtf.rt import rtplan_writer as rt_writer
    from medtf.synth import rtplan_writer as synth_writer

    assert synth_writer.write_brachy_plan is rt_writer.write_brachy_plan
    assert set(synth_writer.__all__) == set(rt_writer.__all__)
