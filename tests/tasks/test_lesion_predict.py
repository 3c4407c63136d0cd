"""`medtf predict MODEL --input STUDY --lesions FILE` for lesion classifiers: a prostate-mpmri model on a
PROSTATEx study folder and a lung-nodules model on a LUNGx CT folder. The probability of every lesion equals the
exported model's serving_default (and predict_tta) on the crop the converter wrote for the same lesion; bad
coordinates fail their own row, named, while the other lesions are predicted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from medtf.data.decoder import make_decoder
from medtf.data.manifest import read_manifest, shard_paths
from medtf.data.schema import get_schema
from tests.conftest import TEST_SALT, run_medtf

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = REPO / "experiments" / "prostate_vgg_elu.yaml"


def _shard_examples(out: Path) -> list[dict]:
    manifest = read_manifest(out)
    ds = tf.data.TFRecordDataset([str(p) for p in shard_paths(out, manifest)],
                                 compression_type=manifest["compression"] or "")
    return list(ds.map(make_decoder(get_schema(manifest["kind"]))).as_numpy_iterator())


def _train_export(shards: Path, root: Path, *overrides) -> Path:
    run = root / "run"
    assert run_medtf("train", EXPERIMENT, "--run-dir", run, "--set", f"data.dir={shards}", "--set", "train.epochs=1",
                     "--set", "data.batch_size=2", *overrides, "--quiet") == 0
    assert run_medtf("export", run, "--output", root / "export", "--quiet") == 0
    return root / "export" / "vgg_elu_small" / "1"


def _write(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _served(model_dir: Path, signature: str, images: np.ndarray) -> np.ndarray:
    sig = tf.saved_model.load(str(model_dir)).signatures[signature]
    return sig(images=tf.constant(images, tf.float32))["probabilities"].numpy()


def _match(examples, centre) -> dict:
    hits = [e for e in examples if np.allclose(e["lesion_position"], centre, atol=1e-3)]
    assert len(hits) == 1, centre
    return hits[0]


@pytest.fixture(scope="module")
def prostate_shards(tmp_path_factory):
    from medtf.synth.prostate_mpmri import generate_prostate_mpmri

    root = tmp_path_factory.mktemp("lesion_prostate")
    generate_prostate_mpmri(root / "src", cases=4, seed=11, fov_mm=48.0, t2_slices=8)
    shards = root / "shards"
    assert run_medtf("convert", "prostate-mpmri", "--input", root / "src", "--output", shards, "--id-salt", TEST_SALT,
                     "--split", "0.5,0.25,0.25", "--patch-mm", "33", "--patch-size", "33", "--no-alignment-pngs",
                     "--quiet") == 0
    return root, root / "src", shards


@pytest.fixture(scope="module")
def prostate_model(prostate_shards):
    root, src, shards = prostate_shards
    model_dir = _train_export(shards, root, "--set", "model.args.input_shape=[33,33]")
    return src, shards, model_dir


def test_predict_crops_are_the_converters_crops_bitwise(prostate_shards, tmp_path):
    """The fast tier's check of the crux: the crop `medtf predict` makes from a study folder and a coordinate
    is bit for bit the converter's crop of that lesion (no model needed); a bad row fails alone."""
    from medtf.tasks.lesions import prostate_crops

    _, src, shards = prostate_shards
    settings = {"kind": "prostate-mpmri", **read_manifest(shards)["options"]}
    examples = _shard_examples(shards)
    images_csv = src / "ProstateX-TrainingLesionInformationv2" / "ProstateX-Images-Train.csv"
    checked = 0
    for prox in ("ProstateX-0000", "ProstateX-0001"):
        rows = [{"lesion": r["fid"], "ijk": r["ijk"]} for r in csv.DictReader(open(images_csv))
                if r["ProxID"] == prox and r["DCMSerNum"] == "4"]
        rows.append({"lesion": "far", "ijk": "10 10 40"})
        crops = prostate_crops(src / "PROSTATEx" / prox, _write(tmp_path / f"{prox}.csv", rows), settings)
        assert [c.lesion for c in crops] == [r["lesion"] for r in rows]
        assert crops[-1].image is None and "outside the T2 image" in crops[-1].error
        for crop in crops[:-1]:
            assert crop.error is None
            np.testing.assert_array_equal(crop.image, _match(examples, crop.centre)["image"])
            checked += 1
    assert checked >= 2


@pytest.mark.slow
def test_prostate_lesions_equal_serving_default_on_the_converters_crops(prostate_model, tmp_path):
    src, shards, model_dir = prostate_model
    meta = json.loads((model_dir / "medtf.json").read_text())
    conv = meta["conversion"]  # recorded at export from the shards' manifest
    assert conv["kind"] == "prostate-mpmri" and conv["patch_mm"] == 33 and conv["patch_size"] == 33
    assert conv["channels"] == ["T2 transverse", "DWI highest b", "ADC"] and "z-score" in conv["normalisation"]

    prox = "ProstateX-0000"
    images_csv = src / "ProstateX-TrainingLesionInformationv2" / "ProstateX-Images-Train.csv"
    t2_rows = [r for r in csv.DictReader(open(images_csv)) if r["ProxID"] == prox and r["DCMSerNum"] == "4"]
    findings_csv = images_csv.with_name("ProstateX-Findings-Train.csv")
    pos = [r["pos"].split() for r in csv.DictReader(open(findings_csv)) if r["ProxID"] == prox][0]
    lesions = [{"lesion": f"L{r['fid']}", "x": "", "y": "", "z": "", "i": i, "j": j, "k": k}
               for r in t2_rows for i, j, k in [r["ijk"].split()]]
    lesions.append({"lesion": "outside_ijk", "x": "", "y": "", "z": "", "i": 5000, "j": 10, "k": 2})
    lesions.append({"lesion": "outside_mm", "x": 0, "y": 0, "z": 900, "i": "", "j": "", "k": ""})
    lesions.append({"lesion": "mm", "x": pos[0], "y": pos[1], "z": pos[2], "i": "", "j": "", "k": ""})
    csv_path = _write(tmp_path / "lesions.csv", lesions)
    study = src / "PROSTATEx" / prox
    out = tmp_path / "pred"
    assert run_medtf("predict", model_dir, "--input", study, "--lesions", csv_path, "--output", out) == 0

    summary = json.loads((out / "prediction.json").read_text())
    by_id = {r["lesion"]: r for r in summary["predictions"]}
    assert summary["failed"] == 2 and by_id["outside_ijk"]["status"] == "failed"
    assert "outside the T2 image" in by_id["outside_ijk"]["error"]
    assert "lies outside" in by_id["outside_mm"]["error"] and by_id["outside_mm"]["probabilities"] is None
    table = {r["lesion"]: r for r in csv.DictReader(open(out / "lesions.csv"))}
    assert table["outside_ijk"]["status"] == "failed" and table["outside_ijk"]["p_positive"] == ""

    examples = _shard_examples(shards)
    ok = [by_id[f"L{r['fid']}"] for r in t2_rows]
    crops = np.stack([_match(examples, r["centre_mm"])["image"] for r in ok])
    served = _served(model_dir, "serving_default", crops)[:, 0]
    predicted = np.array([r["probabilities"][0] for r in ok])
    np.testing.assert_allclose(predicted, served, rtol=1e-5)
    assert float(table[ok[0]["lesion"]]["p_positive"]) == pytest.approx(predicted[0], abs=1e-6)
    assert by_id["mm"]["status"] == "ok"
    np.testing.assert_allclose(by_id["mm"]["centre_mm"], [float(v) for v in pos])  # mm rows are taken as given
    png = out / by_id[ok[0]["lesion"]]["overlay"]
    from PIL import Image

    assert Image.open(png).size == (3 * (33 * 4 + 4) - 4, 33 * 4 + 18)  # three channels side by side

    # --tta goes through predict_tta, on the same crops.
    assert run_medtf("predict", model_dir, "--input", study, "--lesions", csv_path, "--output", tmp_path / "tta",
                     "--tta") == 0
    tta = {r["lesion"]: r for r in json.loads((tmp_path / "tta" / "prediction.json").read_text())["predictions"]}
    np.testing.assert_allclose([tta[r["lesion"]]["probabilities"][0] for r in ok],
                               _served(model_dir, "predict_tta", crops)[:, 0], rtol=1e-5)


@pytest.mark.slow
def test_prostate_model_needs_lesions_and_a_readable_lesion_file(prostate_model, tmp_path, capsys):
    src, _, model_dir = prostate_model
    study = src / "PROSTATEx" / "ProstateX-0001"
    assert run_medtf("predict", model_dir, "--input", study, "--output", tmp_path / "a") == 2
    assert "--lesions" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.csv", [{"lesion": "1", "diameter": "4"}])
    assert run_medtf("predict", model_dir, "--input", study, "--lesions", bad, "--output", tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "x,y,z" in err
    only_bad = _write(tmp_path / "only_bad.csv", [{"lesion": "a", "i": "1", "j": "2", "k": "x"}])
    assert run_medtf("predict", model_dir, "--input", study, "--lesions", only_bad, "--output", tmp_path / "c") == 2
    assert "lesion a: T2 i j k" in capsys.readouterr().err


@pytest.mark.slow
def test_lung_nodules_equal_serving_default_on_the_converters_crops(tmp_path):
    from medtf.synth.lung_nodules import CSV_NAME, generate_lung_case, write_nodule_csv

    src = tmp_path / "lungx"
    rows = []
    for i in range(4):
        rows.extend(generate_lung_case(src, i, seed=3, shape=(24, 96, 96), spacing=(2.0, 2.0, 2.5), nodules=2)[1])
    write_nodule_csv(src / CSV_NAME, rows)
    shards = tmp_path / "shards"
    assert run_medtf("convert", "lung-nodules", "--input", src, "--output", shards, "--id-salt", TEST_SALT,
                     "--split", "0.5,0.25,0.25", "--patch-mm", "64", "--patch-size", "32", "--no-alignment-pngs",
                     "--quiet") == 0
    model_dir = _train_export(shards, tmp_path, "--set", "data.kind=lung-nodules", "--set",
                              "model.args.input_shape=[32,32]", "--set", "model.args.in_channels=1")
    assert json.loads((model_dir / "medtf.json").read_text())["conversion"]["windows"] == [[-600.0, 1500.0]]

    # The whole LUNGx CSV without its Diagnosis column, plus a row whose image number no slice has.
    nodules = [{k: v for k, v in r.items() if not k.startswith("_") and k != "Diagnosis"} for r in rows]
    nodules.append({**nodules[0], "Nodule Number": 9, "Nodule Center Image": 999})
    csv_path = _write(tmp_path / "nodules.csv", nodules)
    scan = src / "LUNGx" / "LUNGx-CT001"
    out = tmp_path / "pred"
    assert run_medtf("predict", model_dir, "--input", scan, "--lesions", csv_path, "--output", out) == 0
    by_id = {r["lesion"]: r for r in json.loads((out / "prediction.json").read_text())["predictions"]}
    assert set(by_id) == {"1", "2", "9"}  # LUNGx-CT001's rows only
    assert by_id["9"]["status"] == "failed" and "image number 999" in by_id["9"]["error"]
    examples = _shard_examples(shards)
    ok = [by_id["1"], by_id["2"]]
    crops = np.stack([_match(examples, r["centre_mm"])["image"] for r in ok])
    np.testing.assert_allclose([r["probabilities"][0] for r in ok], _served(model_dir, "serving_default", crops)[:, 0],
                               rtol=1e-5)


def test_findings_csv_as_is_selects_the_studys_patient(prostate_shards):
    """The PROSTATEx Findings CSV works as a lesion file: pos is mm LPS, fid the id, and only the rows whose
    ProxID is the input folder's (here the dated study folder's parent) are cropped."""
    from medtf.tasks.lesions import prostate_crops

    _, src, shards = prostate_shards
    settings = {"kind": "prostate-mpmri", **read_manifest(shards)["options"]}
    findings = src / "ProstateX-TrainingLesionInformationv2" / "ProstateX-Findings-Train.csv"
    rows = [r for r in csv.DictReader(open(findings)) if r["ProxID"] == "ProstateX-0001"]
    study = next(p for p in (src / "PROSTATEx" / "ProstateX-0001").iterdir() if p.is_dir())
    crops = prostate_crops(study, findings, settings)
    assert [c.lesion for c in crops] == [r["fid"] for r in rows]
    for crop, row in zip(crops, rows):
        assert crop.error is None and crop.image.shape == (33, 33, 3)
        np.testing.assert_allclose(crop.centre, [float(v) for v in row["pos"].split()])
