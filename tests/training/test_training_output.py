"""What a tiny training run prints: no Keras "ran out of data" warning (the validation set's length is declared),
one line per epoch when stdout is not a terminal (``train.verbose: auto``)."""

from __future__ import annotations

import warnings

from tests.training.conftest import tiny_config


def test_no_ran_out_of_data_warning(lgg_tiny, tmp_path, capfd):
    from medtf.training.engine import train

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(tiny_config(lgg_tiny, epochs=3), tmp_path / "run")
    out, err = capfd.readouterr()
    messages = [str(w.message) for w in caught] + [out, err]
    assert not [m for m in messages if "ran out of data" in m], messages
    assert len(result["history"]["val_dice"]) == 3
    # verbose auto, stdout not a terminal: Keras' one line per epoch, no per-step bar redrawn with \r.
    assert out.count("Epoch ") == 3 and "\r" not in out, out
