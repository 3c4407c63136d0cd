"""Report text towers on keras-hub: WordPiece vocabulary from the training split (`vocab`), BERT / DistilBERT
backbone + tokenizer (`tower`), BERT masking (`masking`) and the masked-LM pretraining model (`mlm`)."""

from medtf.models.text import masking  # noqa: F401  (registers the remask_tokens transform)
from medtf.models.text.mlm import ReportMaskedLM
from medtf.models.text.tower import ReportTokenizer, TokenPooling, resolve_text
from medtf.models.text.vocab import learn_vocabulary, read_reports, read_vocabulary, write_vocabulary

__all__ = ["ReportMaskedLM", "ReportTokenizer", "TokenPooling", "learn_vocabulary", "read_reports",
           "read_vocabulary", "resolve_text", "write_vocabulary"]
