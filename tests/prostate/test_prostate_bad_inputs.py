"""Bad PROSTATEx inputs: a clear message naming the file, the rest converted, every failure in the manifest."""

from __future__ import annotations

import json
import shutil

from medtf.data.deid import IdHasher
from medtf.data.manifest import read_manifest
from tests.conftest import TEST_SALT, find_phi, run_medtf
from tests.prostate.conftest import convert, examples, read_csv, write_rows

TRAIN = "ProstateX-TrainingLesionInformationv2"
TEST = "ProstateX-TestLesionInformation"


def test_bad_inputs_are_recorded_and_the_rest_converted(prostate_source, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(prostate_source, src)
    findings = read_csv(src / TRAIN / "ProstateX-Findings-Train.csv")
    per_patient = {}
    for r in findings:
        per_patient.setdefault(r["ProxID"], []).append(int(r["fid"]))
    no_adc = sorted(per_patient)[0]
    multi = next(p for p in sorted(per_patient) if len(per_patient[p]) > 1 and p != no_adc)
    # 1. a patient without its ADC series
    shutil.rmtree(next((src / "PROSTATEx" / no_adc).glob("*/8-ep2ddifftraDYNDISTADC-*")))
    # 2. one finding whose T2 ijk lies outside the image (the patient's other findings must still convert)
    images = read_csv(src / TRAIN / "ProstateX-Images-Train.csv")
    for r in images:
        if r["ProxID"] == multi and r["fid"] == "1" and r["Name"] == "t2_tse_tra0":
            r["ijk"] = "500 10 3"
    write_rows(src / TRAIN / "ProstateX-Images-Train.csv", images)
    # 3. the test-set Images CSV lost its ijk column
    test_images = read_csv(src / TEST / "ProstateX-Images-Test.csv")
    write_rows(src / TEST / "ProstateX-Images-Test.csv", [{k: v for k, v in r.items() if k != "ijk"}
                                                          for r in test_images])
    # 4. a finding of a patient without any DICOM folder
    ghost = "ProstateX-0999"
    write_rows(src / TRAIN / "ProstateX-Findings-Train.csv",
               findings + [{**findings[0], "ProxID": ghost, "fid": "1"}])

    out = tmp_path / "out"
    assert convert(src, out) == 1  # inputs failed: exit 1, the other cases are converted
    manifest = read_manifest(out)
    failures = {f["reason"]: f["file"] for f in manifest["failures"]}
    text = " | ".join(f"{f}: {r}" for r, f in failures.items())
    assert manifest["num_failed"] == 4, text
    hasher = IdHasher(TEST_SALT.encode())
    adc = next(r for r in failures if "no ADC series" in r)
    assert "series 4 (t2_tse_tra)" in adc and hasher(no_adc) in failures[adc]  # what was found, and whose
    outside = next(r for r in failures if "outside" in r)
    assert outside.startswith("fid 1: ijk 500 10 3 of series 4") and "(96, 96, 8) voxels" in outside
    assert failures[outside].endswith("ProstateX-Findings-Train.csv")
    columns = next(r for r in failures if "missing column" in r)
    assert columns.startswith("Images CSV: missing column(s) ijk") and "Test.csv" not in columns
    # the engine pseudonymises folder names of rejected inputs and keeps file names
    assert failures[columns].endswith("ProstateX-Images-Test.csv") and TEST not in failures[columns]
    assert any("no DICOM folder" in r and hasher(ghost) in failures[r] for r in failures)

    got = {(e["patient_id"].decode(), int(e["finding_id"])) for e in examples(out)}
    expected = {(hasher(p), fid) for p, fids in per_patient.items() for fid in fids
                if p != no_adc and (p, fid) != (multi, 1)}
    assert got == expected
    assert run_medtf("verify", out) == 0
    raw = [no_adc, multi, ghost, *per_patient]
    assert not any(r in json.dumps(manifest) for r in raw)
    assert find_phi(out, raw) == [] and not any(r in capsys.readouterr().err for r in raw)


def test_strict_mode_stops_at_the_first_bad_input(prostate_source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(prostate_source, src)
    patient = sorted((src / "PROSTATEx").iterdir())[1]
    shutil.rmtree(next(patient.glob("*/4-t2tsetra-*")))
    out = tmp_path / "out"
    assert convert(src, out, "--strict") == 2
    assert not (out / "manifest.json").exists()


def test_bad_options_are_refused(prostate_source, tmp_path):
    assert convert(prostate_source, tmp_path / "o", "--patch-size", "2") == 2


def test_a_file_cut_inside_its_header_fails_its_series_and_is_named(prostate_source, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(prostate_source, src)
    patients = sorted((src / "PROSTATEx").iterdir())
    cut = {}  # patient -> the damaged file: the last slice of the T2, ADC and chosen (highest b) DWI series
    for patient, pattern in zip(patients, ("4-t2tsetra-*", "8-ep2ddifftraDYNDISTADC-*", "9-ep2ddifftraDYNDISTCALC*",
                                           "3-t2tsesag-*")):
        path = sorted(next(patient.glob(f"*/{pattern}")).iterdir())[-1]
        path.write_bytes(path.read_bytes()[:400])
        cut[patient.name] = path
    unused = cut.pop(patients[3].name)  # the sagittal T2 is not converted: its damaged file fails nothing
    out = tmp_path / "out"
    assert convert(src, out) == 1  # inputs failed: exit 1, the other cases are converted
    manifest = read_manifest(out)
    hasher = IdHasher(TEST_SALT.encode())
    assert manifest["num_failed"] == 3, manifest["failures"]
    for prox, path in cut.items():
        (failure,) = [f for f in manifest["failures"] if f"/{hasher(prox)}/" in f["file"]]
        assert failure["file"].endswith(f"/{path.parent.name}/{path.name}")
        number, name = path.parent.name.split("-")[:2]
        assert failure["reason"].startswith(f"unreadable DICOM file in the folder of series {number} (")
        assert "truncated DICOM header" in failure["reason"], failure
    converted = {e["patient_id"].decode() for e in examples(out)}
    assert converted.isdisjoint(hasher(p) for p in cut) and hasher(unused.parents[2].name) in converted
