"""WordPiece vocabulary of the report text tower: learned from the training split's reports only, stored in the run.

The vocabulary is part of the model (its token ids index the embedding table), so it is learned once, before the
model is built, from the reports of the training split(s) alone: a word that only the validation or test reports
contain never becomes a token (it is split into known pieces or ``[UNK]``), so evaluation stays held out.
``RUN_DIR/vocab.txt`` (one token a line, line number = id) is what `medtf.tasks` hands to the model and what
retrieval / serving code reads back. Only counts are reported (``RUN_DIR/text_stats.json``, TensorBoard
``logs/text``): report text is clinical free text and is never logged.

Example:
    >>> reports = read_reports("shards/reports", ["train"])
    >>> tokens = learn_vocabulary(reports, vocabulary_size=2000)
    >>> write_vocabulary(tokens, "runs/mlm/vocab.txt")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

RESERVED_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")  # ids 0..4, BERT's special tokens
VOCAB_FILE = "vocab.txt"


def read_reports(data_dir: str | os.PathLike, splits: str | Sequence[str]) -> list[bytes]:
    """The ``report`` field (UTF-8 bytes, as stored) of every example of ``splits``, in manifest order.

    Only the report feature is parsed (the volumes are not decoded).
    """
    import tensorflow as tf

    from medtf.data.manifest import read_manifest, shard_paths

    manifest = read_manifest(data_dir)
    splits = [splits] if isinstance(splits, str) else list(splits)
    files = [str(p) for split in splits for p in shard_paths(data_dir, manifest, split)]
    if not files:
        raise ValueError(f"{data_dir}: split(s) {splits} have no shards: no reports to learn a vocabulary from")
    feature = {"report": tf.io.FixedLenFeature([], tf.string, default_value=b"")}
    records = tf.data.TFRecordDataset(files, compression_type=manifest.get("compression") or "")
    try:
        return [tf.io.parse_single_example(r, feature)["report"].numpy() for r in records]
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(f"{data_dir}: the examples of {splits} have no readable 'report' text field "
                         f"(data kind {manifest.get('kind')!r}; the text tower needs mri-reports shards)") from err


def learn_vocabulary(reports: Sequence[bytes | str], vocabulary_size: int, lowercase: bool = True) -> list[str]:
    """WordPiece tokens learned from ``reports``; the reserved tokens `RESERVED_TOKENS` come first. At most
    ``vocabulary_size`` tokens (fewer when the corpus is small: the trainer's count threshold is at least 10, so
    rarer words are split into pieces, down to single characters, which are always kept).

    What keras-hub's ``compute_word_piece_vocabulary`` does (keras-hub's word splitting, tensorflow-text's
    learner), with keras-hub's pure-Python splitting instead of a traced tf.data map: seconds less per run on a
    corpus of a few hundred reports.
    """
    import collections

    from keras_hub.src.tokenizers.word_piece_tokenizer import pretokenize_python
    from tensorflow_text.tools.wordpiece_vocab import wordpiece_tokenizer_learner_lib as learner

    if not reports:
        raise ValueError("no reports to learn a WordPiece vocabulary from")
    counts = collections.Counter()
    for report in reports:
        text = report.decode("utf-8") if isinstance(report, bytes) else str(report)
        counts.update(pretokenize_python(text, lowercase=lowercase, strip_accents=lowercase))
    tokens = learner.learn(counts, int(vocabulary_size), list(RESERVED_TOKENS), include_joiner_token=True,
                           joiner="##")
    return [str(t) for t in tokens[: int(vocabulary_size)]]


def write_vocabulary(tokens: Sequence[str], path: str | os.PathLike) -> Path:
    """One token a line; written to a temporary file then renamed (workers of one run may write it at once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("".join(f"{t}\n" for t in tokens), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_vocabulary(path: str | os.PathLike) -> list[str]:
    """Tokens of a vocabulary file written by `write_vocabulary` (or a keras-hub / BERT ``vocabulary.txt``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no vocabulary file")
    tokens = path.read_text(encoding="utf-8").splitlines()
    missing = [t for t in RESERVED_TOKENS if t not in tokens]
    if missing:
        raise ValueError(f"{path}: not a BERT WordPiece vocabulary (missing the special tokens {missing})")
    return tokens


def as_token_list(vocabulary) -> list[str]:
    """A vocabulary given as a file path or a token list -> the token list."""
    if isinstance(vocabulary, (str, os.PathLike)):
        return read_vocabulary(vocabulary)
    tokens = [str(t) for t in vocabulary]
    missing = [t for t in RESERVED_TOKENS if t not in tokens]
    if missing:
        raise ValueError(f"vocabulary lacks the special tokens {missing}")
    return tokens
