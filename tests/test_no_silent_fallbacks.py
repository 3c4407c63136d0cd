"""Required parts are imported, not tried: a broken import fails loudly instead of degrading (issue #13, defect 7).

Each case makes one medtf module unimportable (``sys.modules[name] = None``, what a missing or broken file gives)
and imports, or runs, the code that needs it: it must raise, not fall back to less (training without USR1
handling, a generic resolver, evaluation without catheter columns, a converter silently left out of the CLI).
"""

from __future__ import annotations

import importlib
import sys

import pytest

CASES = [  # (module that breaks, module importing it)
    ("medtf.hpc.preemption", "medtf.training.engine"),
    ("medtf.hpc.workers", "medtf.training.strategy"),
    ("medtf.rt.reconstruct", "medtf.evaluation.catheters"),
    ("medtf.rt.catheter_match", "medtf.evaluation.catheters"),
]


def _block(monkeypatch, blocked: str, *reloaded: str) -> None:
    """Make ``blocked`` unimportable and forget ``reloaded`` (both restored after the test)."""
    monkeypatch.setitem(sys.modules, blocked, None)
    for name in reloaded:
        if name in sys.modules:
            monkeypatch.delitem(sys.modules, name)


@pytest.mark.parametrize("blocked, importer", CASES, ids=[f"{b}->{i}" for b, i in CASES])
def test_required_import_is_not_optional(monkeypatch, blocked, importer):
    importlib.import_module(importer)  # imports fine with everything present
    _block(monkeypatch, blocked, importer)
    with pytest.raises(ImportError, match=blocked.replace(".", r"\.")):
        importlib.import_module(importer)


def test_training_backup_is_the_preemption_callback(tmp_path):
    from medtf.hpc.preemption import PreemptionCallback
    from medtf.training.engine import _backup
    from medtf.training.strategy import run_paths

    chief = _backup(run_paths(tmp_path / "run"))
    assert isinstance(chief, PreemptionCallback)


def test_cli_refuses_to_hide_a_broken_converter(monkeypatch):
    from medtf.cli import main

    names = {action.dest: action for action in main._build_parser()._subparsers._group_actions}
    assert "nuclei-he" in names["command"].choices["convert"]._subparsers._group_actions[0].choices
    _block(monkeypatch, "tfrecords_builder.nuclei_he")
    with pytest.raises(ImportError, match=r"tfrecords_builder\.nuclei_he"):
        main._build_parser()


def test_builtin_transforms_import_or_fail(monkeypatch):
    from medtf.transforms import base

    _block(monkeypatch, "medtf.transforms.backends")
    with pytest.raises(ImportError, match=r"medtf\.transforms\.backends"):
        base._import_builtin_transforms()
