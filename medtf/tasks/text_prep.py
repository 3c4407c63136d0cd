"""Before a text-tower model is built: its WordPiece vocabulary from the training split, stored in the run.

`prepare_text` is what the ``masked_lm`` and ``contrastive`` tasks' ``prepare`` do (``medtf train`` calls it before
building the model): with ``model.args.text`` (or a variant that needs one, e.g. ``report_mlm``) and neither
``text.preset`` nor ``text.vocabulary``, it learns the vocabulary from the reports of the training split(s) only
(``data.train_split``, or the training folds) and writes ``RUN_DIR/vocab.txt``; a resumed run reuses the file.
With a preset or a given vocabulary, that vocabulary is copied to ``RUN_DIR/vocab.txt`` (what retrieval and serving
code read). ``RUN_DIR/text_stats.json`` and TensorBoard (``logs/text``) get counts only (reports, vocabulary size,
tokens per report, truncated share, [UNK] share): report text is never logged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from medtf.models.text.vocab import VOCAB_FILE, learn_vocabulary, read_reports, read_vocabulary, write_vocabulary


def needs_text_tower(model_name: str, args: dict) -> bool:
    """``model.args.text`` is set, or the variant always has a keras-hub text tower (``fn.text_tower``)."""
    import medtf.models  # noqa: F401  (fills the registry)
    from medtf.models.registry import _MODEL_REGISTRY

    return args.get("text") is not None or bool(getattr(_MODEL_REGISTRY.get(model_name), "text_tower", False))


def _preset_vocabulary(preset: str) -> Path:
    root = Path(preset).expanduser()
    for candidate in (root / VOCAB_FILE, root / "assets" / "tokenizer" / "vocabulary.txt"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"text.preset {preset}: no vocabulary (neither {VOCAB_FILE} of a masked_lm run nor "
                            f"assets/tokenizer/vocabulary.txt of a keras-hub preset)")


def text_stats(reports, tokens, sequence_length: int, lowercase: bool = True) -> dict:
    """Counts over ``reports`` tokenised with ``tokens``: nothing of the text itself."""
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=list(tokens), lowercase=lowercase,
                                               strip_accents=lowercase)
    # Python strings take keras-hub's TensorFlow-free path (lists of ids): no graph to trace for counting.
    rows = tokenizer([r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in reports])
    lengths = np.asarray([len(r) for r in rows])
    unk = tokens.index("[UNK]")
    pieces = np.concatenate(rows) if rows else np.zeros(0)
    return {"reports": int(len(lengths)), "vocabulary_size": len(tokens),
            "tokens_mean": float(lengths.mean()) if len(lengths) else 0.0,
            "tokens_median": float(np.median(lengths)) if len(lengths) else 0.0,
            "tokens_max": int(lengths.max()) if len(lengths) else 0,
            "truncated_share": float((lengths > sequence_length - 2).mean()) if len(lengths) else 0.0,
            "unk_share": float((pieces == unk).mean()) if pieces.size else 0.0, "sequence_length": sequence_length}


def _log_stats(stats: dict, lengths_dir: Path) -> None:
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(lengths_dir))
    with writer.as_default():
        for key, value in stats.items():
            tf.summary.scalar(f"text/{key}", float(value), step=0)
    writer.flush()


def prepare_text(experiment, run_dir, splits=None):
    """``experiment`` with ``model.args.text.vocabulary = RUN_DIR/vocab.txt`` (see the module docstring)."""
    from medtf.models.text.tower import TEXT_DEFAULTS
    from medtf.training.inputs import split_names

    model = experiment.model
    args = dict(model.args)
    if not needs_text_tower(model.name, args):
        return experiment
    text = dict(args.get("text") or {})
    run_dir = Path(run_dir)
    path = run_dir / VOCAB_FILE
    train_splits = splits if splits is not None else split_names(experiment.data)[0]
    if text.get("preset"):
        source = _preset_vocabulary(text["preset"])
        if source.resolve() != path.resolve():
            shutil.copyfile(source, path)
    elif text.get("vocabulary") is not None:
        tokens = read_vocabulary(text["vocabulary"]) if isinstance(text["vocabulary"], str) else text["vocabulary"]
        if not path.is_file() or Path(str(text["vocabulary"])).resolve() != path.resolve():
            write_vocabulary(tokens, path)
        text["vocabulary"] = str(path)
    else:
        if not path.is_file():  # resumed runs keep the vocabulary their weights were trained with
            size = int(text.get("vocabulary_size", TEXT_DEFAULTS["vocabulary_size"]))
            lowercase = bool(text.get("lowercase", TEXT_DEFAULTS["lowercase"]))
            write_vocabulary(learn_vocabulary(read_reports(experiment.data.dir, train_splits), size, lowercase), path)
        text["vocabulary"] = str(path)
    stats = text_stats(read_reports(experiment.data.dir, train_splits), read_vocabulary(path),
                       int(text.get("sequence_length", TEXT_DEFAULTS["sequence_length"])),
                       bool(text.get("lowercase", TEXT_DEFAULTS["lowercase"])))
    (run_dir / "text_stats.json").write_text(json.dumps({"splits": train_splits, **stats}, indent=2) + "\n")
    _log_stats(stats, run_dir / "logs" / "text")
    args["text"] = text
    return experiment.replace(model=model.replace(args=args))
