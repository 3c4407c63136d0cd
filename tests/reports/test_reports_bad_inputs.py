"""mri-reports bad inputs: each bad case is reported (file, row, reason, de-identified) and the rest converts."""

from __future__ import annotations

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medtf.data.deid import IdHasher
from medtf.data.manifest import read_manifest
from tests.conftest import TEST_SALT, find_phi, run_medtf
from tests.reports.conftest import CASES, convert_reports, csv_rows

BAD = "@@NOT-UTF8@@"


@pytest.fixture(scope="module")
def damaged(reports_source, tmp_path_factory):
    """A copy of the source with one problem per case in cases 0-5, plus an orphan row and an orphan folder."""
    src = tmp_path_factory.mktemp("damaged") / "src"
    shutil.copytree(reports_source, src)
    rows = csv_rows(src)
    ids = sorted(rows)
    (src / ids[0] / "flair.nii.gz").unlink()  # missing sequence
    rows[ids[1]]["report"] = "  \n "  # empty report
    rows[ids[2]]["report"] = f"Caf{BAD} findings"  # non-UTF-8 text (Latin-1 byte)
    rows[ids[3]]["class"] = "vasculitis"  # unknown class
    t2s = src / ids[4] / "t2s.nii.gz"  # header geometry 500 mm away from the reference (DWI)
    image = sitk.ReadImage(str(t2s))
    image.SetOrigin(tuple(o + 500.0 for o in image.GetOrigin()))
    sitk.WriteImage(image, str(t2s))
    rows["MR0000001"] = dict(rows[ids[5]], case_id="MR0000001")  # a row without a folder
    shutil.copytree(src / ids[5], src / "MR0000002")  # a folder without a row
    lines = ["case_id,patient_id,report,class"] + [
        ",".join([r["case_id"], r["patient_id"], '"' + r["report"].replace('"', '""') + '"', r["class"]])
        for r in rows.values()] + [',P9,"a report without a case id",normal']
    data = "\r\n".join(lines).encode("utf-8").replace(BAD.encode(), b"\xe9")
    (src / "reports.csv").write_bytes(data)
    return src, ids, rows


@pytest.fixture(scope="module")
def damaged_out(damaged, tmp_path_factory):
    out = tmp_path_factory.mktemp("damaged_out") / "shards"
    assert convert_reports(damaged[0], out) == 1  # inputs failed: exit 1, the other cases are converted
    return out


def test_each_bad_case_is_reported_and_the_rest_converted(damaged, damaged_out):
    src, ids, rows = damaged
    manifest = read_manifest(damaged_out)
    case_hash, patient_hash = IdHasher(TEST_SALT.encode(), prefix="c"), IdHasher(TEST_SALT.encode())
    by_case = {f["case"]: f for f in manifest["failures"]}
    order = sorted(rows, key=lambda c: list(rows).index(c))
    row_of = {cid: order.index(cid) + 2 for cid in order}  # header is row 1

    def failure(cid):
        return by_case[case_hash(cid)]

    assert "missing sequence 'flair'" in failure(ids[0])["reason"]
    assert failure(ids[0])["file"] == f"{patient_hash(rows[ids[0]]['patient_id'])}"
    assert failure(ids[1])["reason"] == f"row {row_of[ids[1]]} (line {_line(src, ids[1])}): report text is empty"
    assert failure(ids[2])["reason"].endswith("report text is not valid UTF-8 (byte 0xE9 at offset 3)")
    assert f"row {row_of[ids[2]]} " in failure(ids[2])["reason"]
    assert "class 'vasculitis' is not one of infarct, tumor, hemorrhage, normal, others" in failure(ids[3])["reason"]
    assert "do not overlap in physical space" in failure(ids[4])["reason"]
    assert failure(ids[4])["file"].endswith("/t2s.nii.gz")
    assert "no case folder with this case id" in failure("MR0000001")["reason"]
    assert "no row for this case in reports.csv" in failure("MR0000002")["reason"]
    orphan = [f for f in manifest["failures"] if f["case"] is None]
    assert orphan == [{"case": None, "file": "reports.csv",
                       "reason": f"row {len(rows) + 2} (line {_line(src, '')}): case_id is empty"}]
    assert manifest["num_failed"] == 8 and len(manifest["failures"]) == 8
    converted = sum(s["num_examples"] for s in manifest["splits"].values())
    assert converted == CASES - 5
    assert run_medtf("verify", damaged_out) == 0


def _line(src, case_id) -> int:
    """The file line where the case's row starts, counting every line ending (also those inside quotes)."""
    lines = re.split(rb"\r\n|\n|\r", (src / "reports.csv").read_bytes())
    return next(i for i, line in enumerate(lines, 1) if line.startswith(case_id.encode() + b","))


def test_failures_and_logs_hold_no_identifiers_or_report_text(damaged, damaged_out, tmp_path, caplog, capsys):
    src, ids, rows = damaged
    needles = set(rows) | {r["patient_id"] for r in rows.values()} | {"MR0000002"}
    text = json.dumps(read_manifest(damaged_out)["failures"])
    assert [n for n in needles if n in text] == []
    assert find_phi(damaged_out, needles) == []
    caplog.clear()
    assert convert_reports(src, tmp_path / "again") == 1  # inputs failed; the exit-1 message holds no PHI either
    logged = caplog.text + capsys.readouterr().err
    assert "skipped" in logged and "report text is empty" in logged
    assert [n for n in needles if n in logged] == []
    assert "Caf" not in logged and rows[ids[3]]["report"][:30] not in logged  # report text is never logged


def test_csv_without_required_columns_stops_with_a_clear_message(reports_source, tmp_path, caplog):
    src = tmp_path / "src"
    shutil.copytree(reports_source, src)
    text = (src / "reports.csv").read_text(encoding="utf-8-sig")
    header, rest = text.split("\n", 1)
    (src / "reports.csv").write_text(header.replace("class", "diagnosis") + "\n" + rest)
    out = tmp_path / "out"
    assert convert_reports(src, out) == 2
    assert "missing required column(s) class (found: 'case_id', 'patient_id', 'report', 'diagnosis')" in caplog.text
    assert not (out / "manifest.json").exists()


def test_strict_mode_stops_at_the_first_bad_case(damaged, tmp_path):
    out = tmp_path / "out"
    assert convert_reports(damaged[0], out, "--strict") == 2
    assert not (out / "manifest.json").exists()


def test_nonfinite_voxels_fail_the_case_or_are_filled_on_request(reports_source, tmp_path):
    from tests.reports.test_reports_convert import by_case

    src = tmp_path / "src"
    shutil.copytree(reports_source, src)
    case = sorted(csv_rows(src))[0]
    flair = src / case / "flair.nii.gz"
    image = nib.load(flair)  # int16 from the generator: stored again as float32 with 3 NaN and 2 +Inf voxels
    data = np.asanyarray(image.dataobj).astype(np.float32)
    centre = tuple(n // 2 for n in data.shape)
    for k, value in enumerate([np.nan, np.nan, np.nan, np.inf, np.inf]):
        data[centre[0] + k, centre[1], centre[2]] = value
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(data, image.affine, header), flair)
    case_hash, patient = IdHasher(TEST_SALT.encode(), prefix="c")(case), IdHasher(TEST_SALT.encode())(
        csv_rows(src)[case]["patient_id"])

    out = tmp_path / "rejected"
    assert convert_reports(src, out) == 1  # inputs failed: exit 1, the other cases are converted
    manifest = read_manifest(out)
    assert [(f["case"], f["file"]) for f in manifest["failures"]] == [(case_hash, f"{patient}/flair.nii.gz")]
    assert manifest["failures"][0]["reason"].startswith(f"5 non-finite voxels (3 NaN, 2 +Inf) of {data.size}; ")
    assert "--nonfinite fill:VALUE" in manifest["failures"][0]["reason"]
    assert sum(s["num_examples"] for s in manifest["splits"].values()) == CASES - 1
    assert manifest["options"]["nonfinite"] == "error"

    out = tmp_path / "filled"
    assert convert_reports(src, out, "--nonfinite", "fill:0") == 0
    manifest = read_manifest(out)
    assert manifest["num_failed"] == 0 and manifest["options"]["nonfinite"] == "fill:0"
    examples = by_case(out, src)
    assert len(examples) == CASES
    assert examples[case]["nonfinite_filled"].tolist() == [0, 0, 5]  # per sequence: dwi_b1000, t2s, flair
    assert all(e["nonfinite_filled"].tolist() == [0, 0, 0] for cid, e in examples.items() if cid != case)
    assert np.isfinite(examples[case]["image"]).all()
    assert convert_reports(src, tmp_path / "bad", "--nonfinite", "zero") == 2
