"""Architecture: the BERT encoder, task heads, and the multitask model that joins them."""

from bertmt.model.bert import BertConfig, BertModel, EncoderOutput
from bertmt.model.pretrained import PretrainedError, load_encoder, load_tokenizer, resolve_pretrained

__all__ = [
    "BertConfig",
    "BertModel",
    "EncoderOutput",
    "PretrainedError",
    "load_encoder",
    "load_tokenizer",
    "resolve_pretrained",
]
