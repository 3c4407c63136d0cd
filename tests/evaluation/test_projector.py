"""TensorBoard projector export (issue #15): the folder format read back with the plugin's own proto, and one
`medtf train` (attention panels on) + `medtf evaluate --projector` of a tiny nucleus run, served by a real
TensorBoard whose projector plugin returns the run, its config and the very tensor that was written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from medtf.evaluation.projector import TENSOR_NAME, read_projector, write_projector
from tests.conftest import run_medtf
from tests.hpc.test_tensorboard import _free_port  # the scalars test's server setup, reused

REPO = Path(__file__).resolve().parents[2]


def test_projector_folder_parses_with_the_plugins_proto(tmp_path):
    from google.protobuf import text_format
    from tensorboard.plugins.projector import ProjectorConfig

    vectors = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    meta = {"class": ["a", "b", "a", "c\tx", "b"], "tile": [0, 0, 1, 2, 2]}  # a tab would shift the columns
    write_projector(tmp_path / "p", vectors, meta)
    write_projector(tmp_path / "p", vectors[:4] * 2, {k: v[:4] for k, v in meta.items()})  # a re-run replaces
    config = text_format.Parse((tmp_path / "p" / "projector_config.pbtxt").read_text(), ProjectorConfig())
    assert len(config.embeddings) == 1 and config.embeddings[0].tensor_name == TENSOR_NAME
    assert list(config.embeddings[0].tensor_shape) == [4, 3] and not config.model_checkpoint_path
    embeddings, rows, _ = read_projector(tmp_path / "p")
    np.testing.assert_array_equal(embeddings, vectors[:4] * 2)
    assert rows == [{"class": "a", "tile": "0"}, {"class": "b", "tile": "0"}, {"class": "a", "tile": "1"},
                    {"class": "c x", "tile": "2"}]
    assert len(list((tmp_path / "p").glob("embeddings.ckpt-*.index"))) == 1
    with pytest.raises(ValueError, match=r"5 embeddings but metadata columns of lengths \{'tile': 4\}"):
        write_projector(tmp_path / "q", vectors, {"class": meta["class"], "tile": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match=r"must be \(n >= 1, D\)"):
        write_projector(tmp_path / "q", np.zeros((0, 3)), {})


@pytest.fixture(scope="module")
def nucleus_run(tmp_path_factory):
    """4 synthetic 64 px tiles (train 2 / val 2), the shipped fine-tuning experiment for 1 epoch of one block with
    the attention panels on, then ``medtf evaluate --split val --projector``."""
    from tests.nuclei.conftest import tiny_tile_shards

    root = tmp_path_factory.mktemp("projector")
    shards = tiny_tile_shards(root)
    run = root / "run"
    assert run_medtf("train", REPO / "experiments/nuclei_finetune.yaml", "--run-dir", run,
                     "--set", f"data.dir={shards}", "--set", "train.epochs=1", "--set", "data.batch_size=2",
                     "--set", "data.transforms=[]", "--set", "data.patch_size=null", "--set",
                     "data.val_patch_size=null", "--set", "model.args.num_layers=1", "--set",
                     "train.log_every_n_steps=0", "--set", "train.hparams=false", "--set", "optimizer.name=sgd",
                     "--set", "optimizer.weight_decay=null", "--set", "train.attention_per_head=true",
                     "--quiet") == 0
    assert run_medtf("evaluate", run, "--split", "val", "--projector", "--quiet") == 0
    return run, shards


def test_training_panels_and_projector_rows_align(nucleus_run):
    from tests.nuclei.conftest import decoded

    run, shards = nucleus_run
    # The attention panels of the training run (image_panels on): 2 validation tiles, 64 px, 3 + 2 heads columns.
    images = {}
    for path in (run / "logs" / "images").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == "attention/cls":
                    images[event.step] = tf.make_ndarray(value.tensor)
    assert list(images) == [0] and [int(v) for v in images[0][:2]] == [64 * 5, 64] and len(images[0]) == 4
    # The projector: one vector per real nucleus of the split, rows in per_nucleus.csv order.
    folder = run / "eval-val" / "projector"
    embeddings, meta, config = read_projector(folder)
    summary = json.loads((run / "eval-val" / "summary.json").read_text())
    counts = [min(len(e["classes"]), 48) for e in decoded(shards, "val")]
    assert embeddings.shape == (sum(counts), 32) == (summary["metrics"]["n"], 32) and summary["projector"]
    per_nucleus = list(csv.DictReader(open(run / "eval-val" / "per_nucleus.csv")))
    names = summary["metrics"]["class_names"]
    assert [r["class"] for r in meta] == [names[int(r["label"])] for r in per_nucleus]
    assert [r["predicted"] for r in meta] == [names[int(r["prediction"])] for r in per_nucleus]
    assert [r["correct"] for r in meta] == ["yes" if r["label"] == r["prediction"] else "no" for r in per_nucleus]
    assert [int(r["tile"]) for r in meta] == [t for t, c in enumerate(counts) for _ in range(c)]
    assert set(meta[0]) == {"class", "predicted", "correct", "tile"}  # no example ids (PHI) in the metadata
    ids = {r["example_id"] for r in per_nucleus}
    assert not any(i in (folder / "metadata.tsv").read_text() for i in ids)
    # The vectors are the tokens the head classified: the head applied to them gives per_nucleus.csv's probabilities.
    from medtf.export.saved_model import load_checkpoint

    head = load_checkpoint(run / "checkpoints" / "best.keras").get_layer("nucleus_head")
    probs = np.asarray(head(embeddings))
    written = np.array([[float(r[f"p_{n}"]) for n in names] for r in per_nucleus])
    np.testing.assert_allclose(probs, written, atol=2e-6)


def _get(port: int, path: str, **query) -> bytes:  # raw bytes: the projector's tensor route is binary
    url = f"http://127.0.0.1:{port}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


@pytest.mark.slow  # the TensorBoard subprocess imports TensorFlow for the plugin: ~8 s CPU, 16 s on a busy machine
def test_tensorboard_projector_plugin_serves_the_export(nucleus_run):
    """The real server on the projector folder (as tests/hpc/test_tensorboard.py starts it for scalars)."""
    try:
        from tensorboard.plugins.projector.projector_plugin import ProjectorPlugin  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the pinned tensorboard ships it
        pytest.skip(f"the TensorBoard projector plugin cannot be loaded: {exc}")
    run, _ = nucleus_run
    folder = run / "eval-val" / "projector"
    embeddings, _, _ = read_projector(folder)
    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("tensorboard")), "--logdir", str(folder),
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runs, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline and not runs:
            try:
                runs = json.loads(_get(port, "/data/plugin/projector/runs"))
            except OSError:
                assert server.poll() is None, "tensorboard exited"
                time.sleep(0.5)
        assert runs == ["."], runs
        config = json.loads(_get(port, "/data/plugin/projector/info", run="."))
        tensor = _get(port, "/data/plugin/projector/tensor", run=".", name=TENSOR_NAME)
        meta = _get(port, "/data/plugin/projector/metadata", run=".", name=TENSOR_NAME).decode()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert config["embeddings"][0]["tensorName"] == TENSOR_NAME
    assert [int(v) for v in config["embeddings"][0]["tensorShape"]] == list(embeddings.shape)
    np.testing.assert_array_equal(np.frombuffer(tensor, np.float32).reshape(embeddings.shape), embeddings)
    assert meta.splitlines()[0] == "class\tpredicted\tcorrect\ttile" and len(meta.splitlines()) == len(embeddings) + 1
