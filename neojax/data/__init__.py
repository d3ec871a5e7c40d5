"""Data: tokenizers, sources, packing and deterministic iterators."""
from neojax.data.tokenizer import EOT, Tokenizer, train_sentencepiece

__all__ = ["EOT", "Tokenizer", "train_sentencepiece"]
