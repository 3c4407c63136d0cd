"""`medtf export`: SavedModel signatures reproduce Keras + training preprocessing, versions, medtf.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_medtf, sha256_tree
from tests.export.conftest import WINDOW, make_run

_LOAD_AND_CALL = """
import sys, numpy as np, tensorflow as tf
model_dir, folder, *signatures = sys.argv[1:]
loaded = tf.saved_model.load(model_dir)
for i, name in enumerate(signatures):
    out = loaded.signatures[name](images=tf.constant(np.load(f"{folder}/x{i}.npy")))
    np.save(f"{folder}/y{i}.npy", out["probabilities"].numpy())
"""


def _fresh_process_call(model_dir: Path, calls: list[tuple[str, np.ndarray]], tmp_path: Path) -> list[np.ndarray]:
    """Load the SavedModel in a new interpreter (no medtf/Keras objects in memory) and call signatures on inputs."""
    for i, (_, x) in enumerate(calls):
        np.save(tmp_path / f"x{i}.npy", x)
    proc = subprocess.run([sys.executable, "-c", _LOAD_AND_CALL, str(model_dir), str(tmp_path),
                           *[name for name, _ in calls]], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [np.load(tmp_path / f"y{i}.npy") for i in range(len(calls))]


def _training_inputs(kind: str, preprocess, raw: np.ndarray) -> np.ndarray:
    """What training feeds the model: parser scaling (`image_scale`) then preprocess transforms, per example."""
    import tensorflow as tf

    from medtf.data.parsers import image_scale
    from medtf.transforms import build_transforms

    compose = build_transforms(preprocess)
    out = []
    for image in raw:
        example = {"image": tf.constant(image, tf.float32) / image_scale(kind)}
        out.append(compose(example, tf.constant([7, 7]))["image"].numpy() if len(compose) else example["image"])
    return np.stack(out)


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory):
    """Run dir with an untrained unet3d_small, window + zscore preprocessing (zscore: per-image statistics)."""
    from medtf.models import get_model

    model = get_model("unet3d_small", in_channels=1, num_classes=1)
    preprocess = WINDOW + [{"name": "zscore"}]
    run = make_run(tmp_path_factory.mktemp("unet3d") / "run", model, "brachy-ct", name="unet3d_small",
                   preprocess=preprocess, patch_size=[8, 16, 16])
    return run, model, preprocess


def test_serving_default_matches_keras_with_training_preprocessing(unet_run, tmp_path):
    from medtf.export import export_run

    run, model, preprocess = unet_run
    version_dir = export_run(run, output=tmp_path / "export")
    rng = np.random.default_rng(0)
    raw = rng.uniform(-1000, 2000, size=(2, 8, 16, 24, 1)).astype(np.float32)
    raw[1] *= 0.5  # different statistics per image: zscore must be per example, as in training
    prepped = _training_inputs("brachy-ct", preprocess, raw)
    # predict_patch is the model alone (inputs already preprocessed)
    served, patch = _fresh_process_call(version_dir, [("serving_default", raw), ("predict_patch", prepped)],
                                        tmp_path)
    expected = model.predict(prepped, verbose=0)
    assert served.shape == (2, 8, 16, 24, 1) and served.dtype == np.float32
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(patch, expected, atol=1e-5)
    assert np.ptp(expected) > 1e-3  # the comparison is not between two constant maps


def _padded_reference(model, prepped: np.ndarray, divisor: int) -> np.ndarray:
    """By hand: pad each image evenly to a multiple of ``divisor`` with its per-channel minimum, predict, crop."""
    out = []
    for image in prepped:
        spatial = image.shape[:-1]
        total = [(-s) % divisor for s in spatial]
        pads = [(t // 2, t - t // 2) for t in total] + [(0, 0)]
        lowest = image.reshape(-1, image.shape[-1]).min(0)
        padded = np.stack([np.pad(image[..., c], pads[:-1], constant_values=lowest[c])
                           for c in range(image.shape[-1])], axis=-1)
        y = model.predict(padded[None], verbose=0)[0]
        out.append(y[tuple(slice(b, b + s) for (b, _), s in zip(pads, spatial))])
    return np.stack(out)


@pytest.mark.parametrize("shape", [(1, 30, 50, 50, 1), pytest.param((2, 7, 13, 17, 1), marks=pytest.mark.slow),
                                   (1, 1, 5, 3, 1)],
                         ids=["issue-30x50x50", "odd-batch-2", "thinner-than-divisor"])
def test_serving_default_takes_any_size(unet_run, tmp_path, shape):
    """The divisor (4 for unet3d_small) is padded inside the graph and the output cropped back."""
    from medtf.export import export_run

    run, model, preprocess = unet_run
    version_dir = export_run(run, output=tmp_path / "export")
    divisor = json.loads((version_dir / "medtf.json").read_text())["size_divisor"]
    assert divisor == 4 and any(s % divisor for s in shape[1:-1])
    rng = np.random.default_rng(1)
    raw = rng.uniform(-1000, 2000, size=shape).astype(np.float32)
    prepped = _training_inputs("brachy-ct", preprocess, raw)
    served, patch = _fresh_process_call(version_dir, [("serving_default", raw), ("predict_patch", prepped)],
                                        tmp_path)
    expected = _padded_reference(model, prepped, divisor)
    assert served.shape == shape and patch.shape == shape
    np.testing.assert_allclose(served, expected, atol=1e-5)
    np.testing.assert_allclose(patch, expected, atol=1e-5)
    # padding with the minimum is not the same as padding with zeros (zscore makes 0 mid-grey)
    assert np.ptp(expected) > 1e-3


def test_saved_model_cli_lists_the_signatures(unet_run, tmp_path):
    import shutil

    from medtf.export import export_run

    run, _, _ = unet_run
    version_dir = export_run(run, output=tmp_path / "export")
    cli = shutil.which("saved_model_cli", path=str(Path(sys.executable).parent))
    assert cli, "saved_model_cli is installed with TensorFlow"
    proc = subprocess.run([cli, "show", "--dir", str(version_dir), "--all"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    blocks = {b.split("'", 1)[0]: b for b in proc.stdout.split("signature_def['")[1:]}
    for name in ("serving_default", "preprocess", "predict_patch"):
        assert name in blocks, proc.stdout
        assert "inputs['images']" in blocks[name] and "shape: (-1, -1, -1, -1, 1)" in blocks[name], blocks[name]


def test_lgg_export_scales_rgb_like_the_parser(tmp_path):
    from medtf.export import export_run
    from medtf.models import get_model

    model = get_model("unet2d_small", in_channels=3, num_classes=1)
    run = make_run(tmp_path / "run", model, "lgg-mri", name="unet2d_small")
    version_dir = export_run(run)
    raw = np.random.default_rng(1).integers(0, 256, size=(1, 32, 32, 3)).astype(np.float32)
    expected = model.predict(raw / 255.0, verbose=0)
    (served,) = _fresh_process_call(version_dir, [("serving_default", raw)], tmp_path)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    meta = json.loads((version_dir / "medtf.json").read_text())
    assert meta["image_scale_divisor"] == 255.0 and meta["preprocess"] == []
    assert (meta["spatial_dims"], meta["in_channels"], meta["num_classes"], meta["size_divisor"]) == (2, 3, 1, 4)


def test_logit_models_are_served_as_probabilities(tmp_path):
    from medtf.export import export_run
    from medtf.models import get_model

    model = get_model("unet2d_small", in_channels=1, num_classes=3, final_activation=None)
    run = make_run(tmp_path / "run", model, "brachy-ct", name="logits")
    version_dir = export_run(run)
    meta = json.loads((version_dir / "medtf.json").read_text())
    assert meta["final_activation"] is None and meta["output_activation"] == "softmax"
    import tensorflow as tf

    raw = np.random.default_rng(2).normal(size=(1, 16, 16, 1)).astype(np.float32)
    served = tf.saved_model.load(str(version_dir)).signatures["serving_default"](images=tf.constant(raw))
    expected = tf.nn.softmax(model.predict(raw, verbose=0)).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(served["probabilities"].numpy().sum(-1), 1.0, atol=1e-5)


def test_medtf_json_and_layout(unet_run, tmp_path):
    import hashlib

    from medtf.export import export_run

    run, _, preprocess = unet_run
    version_dir = export_run(run, checkpoint="last", output=tmp_path / "out", name="catheters")
    assert version_dir == tmp_path / "out" / "catheters" / "1"
    assert {"saved_model.pb", "variables", "medtf.json"} <= {p.name for p in version_dir.iterdir()}
    meta = json.loads((version_dir / "medtf.json").read_text())
    digest = hashlib.sha256((run / "checkpoints" / "last.keras").read_bytes()).hexdigest()
    assert meta["checkpoint"] == {"file": "last.keras", "sha256": digest}
    assert meta["kind"] == "brachy-ct" and meta["model"] == "catheters"
    assert (meta["spatial_dims"], meta["in_channels"], meta["num_classes"]) == (3, 1, 1)
    assert meta["patch_size"] == [8, 16, 16] and meta["threshold"] == 0.5
    assert meta["preprocess"] == preprocess and meta["image_scale_divisor"] == 1.0
    assert not [p for p in (tmp_path / "out" / "catheters").iterdir() if p.name.startswith(".tmp")]


def test_versions_increment_and_are_never_overwritten(unet_run, tmp_path):
    run, _, _ = unet_run
    base = tmp_path / "serving"
    assert run_medtf("export", run, "--output", base) == 0
    assert run_medtf("export", run, "--output", base, "--checkpoint", "last") == 0
    model_base = base / "unet3d_small"
    assert sorted(p.name for p in model_base.iterdir()) == ["1", "2"]
    before = sha256_tree(model_base / "1")
    assert run_medtf("export", run, "--output", base, "--version", "1") == 2
    assert sha256_tree(model_base / "1") == before
    assert run_medtf("export", run, "--output", base, "--version", "7") == 0
    assert run_medtf("export", run, "--output", base) == 0  # next after the highest
    assert sorted(int(p.name) for p in model_base.iterdir()) == [1, 2, 7, 8]
    from medtf.export import resolve_model_dir

    assert resolve_model_dir(model_base) == model_base / "8"
    assert resolve_model_dir(model_base / "2") == model_base / "2"


def test_export_errors(tmp_path, capsys):
    assert run_medtf("export", tmp_path / "missing") == 2
    assert "no config.yaml" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data: {kind: brachy-ct}\nmodel: {name: m}\n")
    assert run_medtf("export", run) == 2
    assert "best.keras does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("patch, dims, expected", [
    (32, 3, [32, 32, 32]), ([8, 16], 2, [8, 16]), ({"name": "random_patch", "size": [4, 8, 8]}, 3, [4, 8, 8]),
    (None, 2, None),
])
def test_resolve_patch_size(patch, dims, expected):
    from medtf.export.saved_model import resolve_patch_size

    assert resolve_patch_size(patch, dims) == expected


def test_resolve_patch_size_rejects_wrong_rank():
    from medtf.export import ExportError
    from medtf.export.saved_model import resolve_patch_size

    with pytest.raises(ExportError, match="3 spatial axes"):
        resolve_patch_size([8, 8], 3)


def test_read_run_takes_the_kind_from_the_shard_manifest(tmp_path):
    from medtf.export import ExportError, read_run

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text(json.dumps({"kind": "lgg-mri"}))
    (tmp_path / "config.yaml").write_text(f"data: {{dir: {shards}}}\nmodel: {{name: m}}\n")
    assert read_run(tmp_path)["data"]["kind"] == "lgg-mri"
    (tmp_path / "config.yaml").write_text(f"data: {{dir: {tmp_path / 'gone'}}}\n")
    with pytest.raises(ExportError, match="data.kind is not set"):
        read_run(tmp_path)
