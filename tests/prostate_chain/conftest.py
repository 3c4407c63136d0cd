"""The shipped TL-chain experiment pointed at given shard folders, and tiny synthetic prostate / brain / lung
shards with one input (32x32x3) for the end-to-end chain tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import TEST_SALT, run_medtf

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = REPO / "experiments/prostate_tl_chain.yaml"
SIZE = 32
TINY = {"epochs": 1, "steps_per_epoch": 2, "validation_steps": 1, "log_every_n_steps": 0, "image_panels": False,
        "verbose": 0}


def chain_config(prostate, brain, lung, tiny: bool = True) -> dict:
    """The shipped chain with its three data folders replaced (and a CPU-seconds scale when ``tiny``)."""
    config = yaml.safe_load(EXPERIMENT.read_text())
    where = {"data/prostate-dwi": str(prostate), "data/brain": str(brain), "data/lung": str(lung)}
    config["data"]["dir"] = where[config["data"]["dir"]]
    for phase in config["transfer"]["phases"]:
        phase["data"]["dir"] = where[phase["data"]["dir"]]
    if tiny:
        config["data"]["batch_size"] = 4
        config["model"]["args"]["input_shape"] = [SIZE, SIZE]
        config["train"] = dict(TINY)
    return config


def write_config(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def chain_sources(tmp_path_factory) -> dict[str, Path]:
    """Synthetic sources in the real layouts: 10 PROSTATEx patients, 8+8 brain slices, 4 LUNGx scans."""
    from medtf.synth.image_folders import generate_image_folders
    from medtf.synth.lung_nodules import generate_lung_nodules
    from medtf.synth.prostate_mpmri import generate_prostate_mpmri

    root = tmp_path_factory.mktemp("chain_src")
    generate_prostate_mpmri(root / "prostate", cases=10, seed=5, fov_mm=48.0, t2_slices=8)
    generate_image_folders(root / "brain", cases=8, seed=1, size=48)
    generate_lung_nodules(root / "lung", cases=4, seed=2, shape=(16, 64, 64))
    return {"prostate": root / "prostate", "brain": root / "brain", "lung": root / "lung"}


def convert_all(sources: dict[str, Path], out: Path, prostate_split: list[str]) -> dict[str, Path]:
    """The three conversions as the experiment's comments give them, at 32x32: one channel everywhere."""
    size = str(SIZE)
    dirs = {k: out / k for k in ("prostate", "brain", "lung")}
    assert run_medtf("convert", "prostate-mpmri", "--input", sources["prostate"], "--output", dirs["prostate"],
                     "--id-salt", TEST_SALT, "--patch-mm", size, "--patch-size", size, "--no-alignment-pngs",
                     "--channels", "dwi", *prostate_split) == 0
    assert run_medtf("convert", "image-folders", "--input", sources["brain"], "--output", dirs["brain"],
                     "--id-salt", TEST_SALT, "--grayscale", "--crop-black-margin", "--resize", size,
                     "--split", "0.5,0.5") == 0
    assert run_medtf("convert", "lung-nodules", "--input", sources["lung"], "--output", dirs["lung"],
                     "--id-salt", TEST_SALT, "--patch-mm", size, "--patch-size", size, "--window", "lung",
                     "--split", "0.5,0.5", "--no-alignment-pngs") == 0
    return dirs
