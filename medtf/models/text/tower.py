"""The report text tower: a keras-hub BERT / DistilBERT backbone, its WordPiece tokenizer, and a pooling.

A tower is described by one ``text`` mapping (a model argument, e.g. ``model.args.text`` of an experiment)::

    arch: distil_bert          distil_bert | bert (keras_hub.models.DistilBertBackbone / BertBackbone)
    preset: null               a local keras-hub preset directory (``save_to_preset``, e.g. ``medtf export`` of a
                               masked_lm run) or a masked_lm run directory: backbone weights AND its vocabulary
    vocabulary: null           a vocab.txt path or a token list (the tasks learn it from the training split and
                               set it: `medtf.models.text.vocab`)
    vocabulary_size: 2000      target size when the vocabulary is learned
    sequence_length: 64        tokens per report: [CLS] + pieces (truncated) + [SEP], padded with [PAD]
    num_layers / num_heads / hidden_dim / intermediate_dim / dropout: a randomly initialised backbone's size
    lowercase: true
    pooling: mean              mean (over non-padding tokens) | cls | attention (a learned query, trained even
                               when the backbone is frozen): the report's feature vector (`TokenPooling`)
    pooling_heads: 4           attention pooling's heads (must divide the hidden size)
    trainable: true            false: the backbone is frozen (the study's frozen DistilBERT)

`resolve_text` turns it into ``(backbone, tokenizer, resolved)``; ``resolved`` has the backbone's architecture
(``backbone``: its Keras config) and the token list instead of the preset / file, so a model's ``get_config``
rebuilds the same architecture without the preset directory (the weights come from the checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import ops

TEXT_DEFAULTS = dict(arch="distil_bert", preset=None, vocabulary=None, vocabulary_size=2000, sequence_length=64,
                     num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128, dropout=0.1, lowercase=True,
                     pooling="mean", pooling_heads=4, trainable=True, backbone=None)


def _archs() -> dict:
    import keras_hub

    return {"distil_bert": keras_hub.models.DistilBertBackbone, "bert": keras_hub.models.BertBackbone}


@keras.saving.register_keras_serializable(package="medtf")
class ReportTokenizer(keras.layers.Layer):
    """Report strings ``(B,)`` (or one scalar string) -> ``token_ids (B, L)`` int32 and ``padding_mask (B, L)``
    bool: keras-hub's BERT WordPiece tokenizer, then ``[CLS] pieces[:L - 2] [SEP]`` padded with ``[PAD]``
    (keras-hub ``StartEndPacker``). Pure TensorFlow: runs inside ``Dataset.map`` and inside a SavedModel.

    Args:
        vocabulary: token list or a vocab.txt path (must hold [PAD] [CLS] [SEP] [UNK] [MASK]).
        sequence_length: ``L``.
        lowercase: lower-case and strip accents first (as the vocabulary was learned).
    """

    def __init__(self, vocabulary, sequence_length: int = 64, lowercase: bool = True, **kwargs):
        import keras_hub

        from medtf.models.text.vocab import as_token_list

        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.vocabulary = as_token_list(vocabulary)
        self.sequence_length, self.lowercase = int(sequence_length), bool(lowercase)
        if self.sequence_length < 3:
            raise ValueError(f"sequence_length {sequence_length} leaves no room for text between [CLS] and [SEP]")
        self.tokenizer = keras_hub.models.BertTokenizer(vocabulary=self.vocabulary, lowercase=self.lowercase,
                                                        strip_accents=self.lowercase)
        ids = {t: i for i, t in enumerate(self.vocabulary)}
        self.pad_id, self.cls_id, self.sep_id = ids["[PAD]"], ids["[CLS]"], ids["[SEP]"]
        self.mask_id, self.unk_id = ids["[MASK]"], ids["[UNK]"]
        self.packer = keras_hub.layers.StartEndPacker(self.sequence_length, start_value=self.cls_id,
                                                      end_value=self.sep_id, pad_value=self.pad_id,
                                                      return_padding_mask=True)

    @property
    def vocabulary_size(self) -> int:
        return len(self.vocabulary)

    @property
    def special_ids(self) -> tuple[int, int, int]:
        """Ids never masked or counted as text: [PAD], [CLS], [SEP]."""
        return self.pad_id, self.cls_id, self.sep_id

    def call(self, text):
        import tensorflow as tf

        token_ids, padding_mask = self.packer(self.tokenizer(tf.convert_to_tensor(text, tf.string)))
        return {"token_ids": tf.cast(token_ids, tf.int32), "padding_mask": tf.cast(padding_mask, tf.bool)}

    def get_config(self):
        return {**super().get_config(), "vocabulary": list(self.vocabulary), "sequence_length": self.sequence_length,
                "lowercase": self.lowercase}


@keras.saving.register_keras_serializable(package="medtf")
class TokenPooling(keras.layers.Layer):
    """``sequence (B, L, H)`` + ``padding_mask (B, L)`` -> ``(B, H)``: the mean of the non-padding tokens
    (``mean``), the [CLS] token (``cls``) or a learned query's multi-head attention over the non-padding tokens
    (``attention``, ``num_heads`` heads; CLIP's attention pooling, big_vision's MAP head without its MLP).

    Masked-LM pretraining supervises every token but not [CLS], so a frozen MLM-trained backbone is better read out
    by the mean than by [CLS]. The attention pooling has weights of its own, trained with the projection while a
    frozen backbone stays fixed: a report names a finding's side in one or two of its ~50 tokens, which the mean
    dilutes; a query learns to look at them (RESULTS.md #16: the frozen MLM tower's states at the side words keep
    the side, its mean does not).
    """

    MODES = ("mean", "cls", "attention")

    def __init__(self, mode: str = "mean", num_heads: int = 4, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"text pooling {mode!r}: use one of {list(self.MODES)}")
        self.mode, self.num_heads = mode, int(num_heads)
        self.attention = None

    def build(self, sequence_shape, padding_mask_shape=None):
        if self.mode != "attention":
            return
        hidden = int(sequence_shape[-1])
        if hidden % self.num_heads:
            raise ValueError(f"text pooling_heads {self.num_heads} must divide the tower's hidden_dim {hidden}")
        self.query = self.add_weight(name="query", shape=(1, 1, hidden), dtype="float32",
                                     initializer=keras.initializers.RandomNormal(stddev=hidden ** -0.5))
        self.attention = keras.layers.MultiHeadAttention(self.num_heads, hidden // self.num_heads, dtype="float32",
                                                         name="attention")
        self.attention.build((None, 1, hidden), (None, sequence_shape[1], hidden))

    def call(self, sequence, padding_mask):
        sequence = ops.cast(sequence, "float32")
        if self.mode == "cls":
            return sequence[:, 0]
        if self.mode == "attention":
            query = ops.repeat(self.query, ops.shape(sequence)[0], axis=0)
            mask = ops.cast(padding_mask, "bool")[:, None, :]  # (B, 1 query, L keys)
            return self.attention(query, sequence, attention_mask=mask)[:, 0]
        weights = ops.cast(padding_mask, "float32")[..., None]
        return ops.sum(sequence * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)

    def compute_output_shape(self, sequence_shape, padding_mask_shape):
        return (sequence_shape[0], sequence_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "num_heads": self.num_heads}


def backbone_sequence(backbone, token_ids, padding_mask):
    """The backbone's per-token output ``(B, L, H)`` (BERT gets all-zero segment ids)."""
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
    if "segment_ids" in backbone.input:
        inputs["segment_ids"] = ops.zeros_like(token_ids)
    out = backbone(inputs)
    return out["sequence_output"] if isinstance(out, dict) else out


def _from_preset(path: str):
    """``(backbone, tokens, lowercase)`` of a keras-hub preset directory or a masked_lm run directory."""
    import keras_hub

    root = Path(path).expanduser()
    if (root / "checkpoints" / "best.keras").is_file():  # a masked_lm run: its best checkpoint's tower
        model = keras.saving.load_model(root / "checkpoints" / "best.keras", compile=False)
        if not hasattr(model, "text_backbone"):
            raise ValueError(f"text.preset {path}: the run's model {model.name!r} has no text backbone "
                             f"(a masked_lm run or a keras-hub preset directory is needed)")
        tok = model.tokenizer
        return model.text_backbone, list(tok.vocabulary), tok.lowercase
    if not (root / "config.json").is_file():
        # keras-hub would take an unknown string for a Kaggle / Hugging Face handle and go to the network.
        raise FileNotFoundError(f"text.preset {path}: not a local keras-hub preset directory (no config.json; "
                                f"write one with backbone.save_to_preset / tokenizer.save_to_preset or "
                                f"`medtf export` of a masked_lm run) nor a masked_lm run directory")
    backbone = keras_hub.models.Backbone.from_preset(str(root))
    if not (root / "tokenizer.json").is_file():
        raise FileNotFoundError(f"text.preset {path}: no tokenizer.json: the preset's weights need its own "
                                f"vocabulary (save the tokenizer with tokenizer.save_to_preset)")
    tokenizer = keras_hub.models.Tokenizer.from_preset(str(root))
    return backbone, list(tokenizer.get_vocabulary()), bool(getattr(tokenizer, "lowercase", True))


def resolve_text(text: dict | None):
    """``(backbone, tokenizer, resolved spec)`` from a ``text`` mapping (see the module docstring)."""
    import keras_hub  # noqa: F401  (registers the backbone classes a stored architecture names)

    text = dict(text or {})
    unknown = sorted(set(text) - set(TEXT_DEFAULTS))
    if unknown:
        raise ValueError(f"text: unknown key(s) {unknown}; known: {sorted(TEXT_DEFAULTS)}")
    spec = {**TEXT_DEFAULTS, **text}
    if spec["preset"]:
        backbone, tokens, spec["lowercase"] = _from_preset(str(spec["preset"]))
    else:
        if spec["vocabulary"] is None:
            raise ValueError("text: no vocabulary: give text.vocabulary (a vocab.txt) or text.preset; medtf train "
                             "learns it from the training split's reports (RUN_DIR/vocab.txt)")
        from medtf.models.text.vocab import as_token_list

        tokens = as_token_list(spec["vocabulary"])
        if spec["backbone"] is not None:
            backbone = keras.saving.deserialize_keras_object(spec["backbone"])
        else:
            if spec["arch"] not in _archs():
                raise ValueError(f"text.arch {spec['arch']!r}: use one of {sorted(_archs())}")
            backbone = _archs()[spec["arch"]](
                vocabulary_size=len(tokens), num_layers=int(spec["num_layers"]), num_heads=int(spec["num_heads"]),
                hidden_dim=int(spec["hidden_dim"]), intermediate_dim=int(spec["intermediate_dim"]),
                dropout=float(spec["dropout"]), max_sequence_length=int(spec["sequence_length"]), name="text_backbone")
    if backbone.vocabulary_size != len(tokens):
        raise ValueError(f"text: the backbone embeds {backbone.vocabulary_size} tokens, the vocabulary has "
                         f"{len(tokens)}")
    max_length = getattr(backbone, "max_sequence_length", None)
    if max_length is not None and int(spec["sequence_length"]) > int(max_length):
        raise ValueError(f"text.sequence_length {spec['sequence_length']} exceeds the backbone's "
                         f"max_sequence_length {max_length}")
    backbone.trainable = bool(spec["trainable"])
    tokenizer = ReportTokenizer(tokens, spec["sequence_length"], spec["lowercase"], name="report_tokenizer")
    arch = {cls.__name__: name for name, cls in _archs().items()}.get(type(backbone).__name__, spec["arch"])
    resolved = {**spec, "arch": arch, "preset": None, "vocabulary": tokens,
                "backbone": keras.saving.serialize_keras_object(backbone)}
    return backbone, tokenizer, resolved


def token_inputs():
    """Keras inputs ``token_ids`` and ``padding_mask`` ``(B, L)`` int32."""
    return (keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            keras.Input(shape=(None,), dtype="int32", name="padding_mask"))
