"""Learning-rate schedules: warm-up + cosine values by hand, ReduceLROnPlateau through a real fit, LR logging."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.training.conftest import history_rows, tiny_config


def _cosine(step, peak, total, warmup, min_lr, start=0.0):
    if step < warmup:
        return start + (peak - start) * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return min_lr + (peak - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


@pytest.mark.parametrize("warmup", [0, 10])
def test_warmup_cosine_matches_hand_computed_values(warmup):
    from medtf.training.schedules import warmup_cosine

    schedule = warmup_cosine(1e-3, 110, warmup, min_lr=1e-5)
    for step in [0, 1, 5, 9, 10, 11, 35, 60, 85, 109, 110, 200]:
        np.testing.assert_allclose(float(schedule(step)), _cosine(step, 1e-3, 110, warmup, 1e-5), rtol=1e-5)
    # by hand: half-way through the decay is the mean of peak and floor; the warm-up is linear from 0
    assert float(schedule(warmup + (110 - warmup) // 2)) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-5)
    if warmup:
        assert float(schedule(5)) == pytest.approx(5e-4, rel=1e-6) and float(schedule(0)) == 0.0


def test_build_learning_rate_from_config_and_serialization():
    import keras

    from medtf.training.schedules import build_learning_rate

    assert build_learning_rate(None, 3e-4) == 3e-4
    assert build_learning_rate({"name": "reduce_on_plateau"}, 3e-4) == 3e-4
    lr = build_learning_rate({"name": "cosine", "warmup_epochs": 2, "min_lr": 1e-6}, 1e-3, steps_per_epoch=5,
                             epochs=4)
    assert lr.warmup_steps == 10 and lr.decay_steps == 10 and lr.warmup_target == 1e-3
    assert float(lr(10)) == pytest.approx(1e-3) and float(lr(20)) == pytest.approx(1e-6, rel=1e-4)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(lr))
    assert [float(clone(s)) for s in (0, 4, 13, 20)] == [float(lr(s)) for s in (0, 4, 13, 20)]
    with pytest.raises(ValueError, match="steps per epoch"):
        build_learning_rate({"name": "cosine"}, 1e-3)
    with pytest.raises(ValueError, match="unknown schedule"):
        build_learning_rate({"name": "step"}, 1e-3)
    with pytest.raises(ValueError, match="not both"):
        build_learning_rate({"name": "cosine", "warmup_steps": 1, "warmup_epochs": 1}, 1e-3, 5, 2)


def test_reduce_on_plateau_lowers_the_logged_learning_rate(lgg_tiny, tmp_path):
    from medtf.training.engine import train

    config = tiny_config(lgg_tiny, epochs=3, steps_per_epoch=1, image_panels=False, log_every_n_steps=0)
    # min_delta so large that no epoch after the first counts as an improvement: a cut after every later epoch
    config["schedule"] = {"name": "reduce_on_plateau", "monitor": "loss", "factor": 0.5, "patience": 1,
                          "min_delta": 1e9}
    result = train(config, tmp_path / "plateau")
    logged = [float(r["learning_rate"]) for r in history_rows(tmp_path / "plateau")]
    np.testing.assert_allclose(logged, [1e-3, 1e-3, 5e-4], rtol=1e-6)
    np.testing.assert_allclose(result["history"]["learning_rate"], logged, rtol=1e-6)
    assert float(result["model"].optimizer.learning_rate.numpy()) == pytest.approx(2.5e-4)


def test_cosine_schedule_in_a_fit_logs_each_epochs_rate(lgg_tiny, tmp_path):
    from medtf.training.engine import train

    config = tiny_config(lgg_tiny, epochs=3, steps_per_epoch=2, image_panels=False, log_every_n_steps=0)
    config["schedule"] = {"name": "cosine", "warmup_steps": 2, "min_lr": 0.0}
    train(config, tmp_path / "cosine")
    logged = [float(r["learning_rate"]) for r in history_rows(tmp_path / "cosine")]
    # logged at the end of epochs 1..3 = after steps 2, 4, 6 of 2 warm-up + 4 decay steps
    np.testing.assert_allclose(logged, [_cosine(s, 1e-3, 6, 2, 0.0) for s in (2, 4, 6)], rtol=1e-5, atol=1e-9)
    assert logged[0] == pytest.approx(1e-3) and logged[1] == pytest.approx(5e-4) and logged[2] == 0.0


def test_a_warmup_longer_than_the_run_is_shortened_with_a_note(capsys):
    from medtf.training.schedules import build_learning_rate, warmup_cosine

    with pytest.raises(ValueError, match=r"need 0 <= warmup_steps \(1\) < total_steps \(1\)"):
        warmup_cosine(1e-3, 1, 1)  # the low-level schedule still refuses it
    lr = build_learning_rate({"name": "cosine", "warmup_epochs": 1}, 1e-3, steps_per_epoch=1, epochs=1)
    assert "warm-up shortened to 0 step(s)" in capsys.readouterr().err
    assert float(lr(0)) == pytest.approx(1e-3) and float(lr(1)) == pytest.approx(0.0, abs=1e-9)
    lr = build_learning_rate({"name": "cosine", "warmup_steps": 7}, 1e-3, steps_per_epoch=3, epochs=2)
    assert lr.warmup_steps == 5 and lr.decay_steps == 1  # 6 steps: 5 of warm-up, 1 of decay
    assert "warmup_steps=7 means 7 warm-up step(s), but the run has only 6" in capsys.readouterr().err
    build_learning_rate({"name": "cosine", "warmup_steps": 5}, 1e-3, steps_per_epoch=3, epochs=2)
    assert capsys.readouterr().err == ""  # fits: no note
