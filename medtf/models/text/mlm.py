"""Masked-language-model pretraining of the report text tower (BERT's MLM objective, keras-hub layers).

Reference: Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
NAACL 2019.
"""

from __future__ import annotations

import math

import keras

from medtf.models.registry import register_model
from medtf.models.text.tower import backbone_sequence, resolve_text, token_inputs


@keras.saving.register_keras_serializable(package="medtf")
class ReportMaskedLM(keras.Model):
    """Text backbone + keras-hub ``MaskedLMHead`` (tied to the token embedding, as BERT, unless told otherwise):
    ``{"token_ids", "padding_mask", "mask_positions" (B, M)}`` int32 -> logits ``(B, M, V)`` at the masked
    positions. The tokenizer (``model.tokenizer``, a `ReportTokenizer`) and the masking settings travel with the
    model; the task `medtf.tasks.masked_lm` tokenises and masks the reports in tf.data.

    Args:
        text: the text tower mapping (`medtf.models.text.tower`); its vocabulary is learned by ``medtf train``.
        mask_rate: share of each report's text tokens masked (BERT: 0.15).
        max_masked: mask slots per report ``M`` (default ``ceil(mask_rate * (sequence_length - 2))``, at least 1).
        mask_seed: salt of the per-example mask seeds.
        tie_embeddings: the head's output projection is the token embedding transposed (BERT). False: its own
            weights, so the input embeddings are not also the output classes: words that fill the same contexts
            (left / right) get the same output scores, and tied, the same input embedding too.

    Example:
        >>> model = ReportMaskedLM(text={"vocabulary": "runs/mlm/vocab.txt", "sequence_length": 32})
        >>> model.text_backbone.save_to_preset("preset")    # what a CLIP text tower loads (text.preset)
    """

    def __init__(self, text=None, mask_rate: float = 0.15, max_masked: int | None = None, mask_seed: int = 0,
                 tie_embeddings: bool = True, **kwargs):
        import keras_hub

        # === Layers ===
        backbone, tokenizer, spec = resolve_text(text)
        if not 0.0 < float(mask_rate) < 1.0:
            raise ValueError(f"mask_rate {mask_rate} must be in (0, 1)")
        if max_masked is None:
            max_masked = max(1, math.ceil(float(mask_rate) * (tokenizer.sequence_length - 2)))
        head = keras_hub.layers.MaskedLMHead(vocabulary_size=backbone.vocabulary_size,
                                             token_embedding=backbone.token_embedding if tie_embeddings else None,
                                             intermediate_activation="gelu", name="mlm_head")
        # === Functional Model ===
        token_ids, padding_mask = token_inputs()
        positions = keras.Input(shape=(None,), dtype="int32", name="mask_positions")
        logits = head(backbone_sequence(backbone, token_ids, padding_mask), mask_positions=positions)
        logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
        super().__init__(inputs={"token_ids": token_ids, "padding_mask": padding_mask, "mask_positions": positions},
                         outputs=logits, name=kwargs.pop("name", "report_masked_lm"), **kwargs)
        # === Config ===
        self.text_backbone, self.tokenizer, self.text = backbone, tokenizer, spec
        self.mask_rate, self.max_masked, self.mask_seed = float(mask_rate), int(max_masked), int(mask_seed)
        self.tie_embeddings = bool(tie_embeddings)

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "text": self.text, "mask_rate": self.mask_rate,
                "max_masked": self.max_masked, "mask_seed": self.mask_seed, "tie_embeddings": self.tie_embeddings}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def save_text_preset(self, preset_dir) -> None:
        """A keras-hub preset directory of the text tower: backbone (config + weights) and tokenizer
        (vocabulary), loadable by ``keras_hub.models.Backbone.from_preset`` and a CLIP ``text.preset``."""
        self.text_backbone.save_to_preset(str(preset_dir))
        self.tokenizer.tokenizer.save_to_preset(str(preset_dir))


@register_model(model_class=ReportMaskedLM)
def report_mlm(**kwargs):
    """Masked-LM text tower, tiny by default (2 layers, 64-d, 2 heads; set ``text`` sizes for a real run)."""
    return ReportMaskedLM(**kwargs)


report_mlm.text_tower = True  # medtf train learns its vocabulary first (medtf.tasks.text_prep)
