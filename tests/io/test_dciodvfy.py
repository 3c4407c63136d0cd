"""Every DICOM series and plan `medtf synth` writes passes dicom3tools' dciodvfy with no error (and no warning but
the ones listed, with the reason)."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.conftest import run_medtf

# DWI and calculated-b-value slices store their b-value in the standard DiffusionBValue (0018,9087), as scanners
# do and as the prostate converter reads it; the MR Image IOD does not list it, so dciodvfy calls the file a
# Standard Extended SOP Class (allowed by PS3.4 B.1.3) with these two warnings.
B_VALUE_WARNINGS = {
    "Warning - Attribute is not present in standard DICOM IOD - (0x0018,0x9087) FD Diffusion b-value",
    "Warning - Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended "
    "SOP Class",
}


def _one_file_per_series(root: Path) -> list[Path]:
    """The first file of every folder holding .dcm files, plus every RT Plan (one file per plan)."""
    firsts = {}
    for path in sorted(root.rglob("*.dcm")):
        key = path if path.name.startswith("RP") else path.parent
        firsts.setdefault(key, path)
    return list(firsts.values())


def test_synthetic_brachy_ct_and_plans_are_valid_dicom(tmp_path, dciodvfy, capsys):
    assert run_medtf("synth", "brachy-ct", "--out", tmp_path, "--cases", 2, "--seed", 4) == 0
    files = _one_file_per_series(tmp_path)
    assert sorted(pydicom.dcmread(f, stop_before_pixels=True).Modality for f in files) == ["CT", "CT", "RTPLAN",
                                                                                           "RTPLAN"]
    for path in files:
        report = dciodvfy(path)
        assert (report.errors, report.warnings) == ([], []), report.output
    plan = pydicom.dcmread(next(f for f in files if f.name.startswith("RP")))
    setup = plan.ApplicationSetupSequence[0]
    assert setup.ApplicationSetupType == "PERINEAL" and plan.TreatmentMachineSequence[0].TreatmentMachineName
    assert {float(c.SourceApplicatorStepSize) for c in setup.ChannelSequence} == {5.0}


def test_synthetic_prostate_mr_series_are_valid_dicom(tmp_path, dciodvfy):
    from medtf.synth.prostate_mpmri import generate_prostate_mpmri

    generate_prostate_mpmri(tmp_path, cases=1, seed=2)
    files = _one_file_per_series(tmp_path)
    assert len(files) == 5  # T2 sagittal/transversal, DWI, ADC, calculated b-value
    for path in files:
        report = dciodvfy(path)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert report.errors == [], report.output
        allowed = B_VALUE_WARNINGS if "DiffusionBValue" in ds else set()
        assert set(report.warnings) <= allowed, report.output


def test_the_validator_finds_errors(tmp_path, dciodvfy):
    """The helper reports what dciodvfy finds: a CT slice without its pixel spacing is an error."""
    import numpy as np

    from medtf.io.volume import Volume
    from medtf.synth.dicom_writer import write_dicom_series

    paths = write_dicom_series(Volume(np.zeros((1, 4, 4), np.int16), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)), tmp_path / "ct", body_part="PELVIS")
    ds = pydicom.dcmread(paths[0])
    del ds.PixelSpacing
    ds.save_as(tmp_path / "broken.dcm")
    report = dciodvfy(tmp_path / "broken.dcm")
    assert any("PixelSpacing" in e for e in report.errors), report.output
    assert dciodvfy(tmp_path / "missing.dcm").errors  # an unreadable file is not valid


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_dicom_writer_series_are_valid_dicom(tmp_path, dciodvfy, modality):
    import numpy as np

    from medtf.io.volume import Volume
    from medtf.synth.dicom_writer import write_dicom_series

    volume = Volume(np.arange(2 * 6 * 5, dtype=np.int16).reshape(2, 6, 5), spacing=(0.7, 0.8, 3.0),
                    origin=(-2.0, 1.0, 40.0))
    paths = write_dicom_series(volume, tmp_path, modality=modality, body_part="PELVIS")
    report = dciodvfy(paths[0])
    assert (report.errors, report.warnings) == ([], []), report.output
