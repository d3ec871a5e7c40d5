"""Tokenizers: GPT-2 byte-level BPE (through `tokenizers`) or a sentencepiece model, one interface.

    tok = Tokenizer.from_path("path/to/hf_dir")        # tokenizer.json or vocab.json + merges.txt
    ids = tok.encode("Hello world<|endoftext|>")       # <|endoftext|> -> 50256 with GPT-2's vocab
    tok.decode(ids) == "Hello world<|endoftext|>"      # exact round trip
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Iterable, Sequence

import sentencepiece as spm
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from neojax import paths
from neojax.cli import message

EOT = "<|endoftext|>"


class Tokenizer:
    """Wraps a `tokenizers.Tokenizer` (kind "bpe") or a `sentencepiece` processor (kind "sentencepiece")."""

    def __init__(self, backend, kind: str, source: str | None = None):
        self.backend, self.kind, self.source = backend, kind, source
        if kind == "bpe":
            eos = backend.token_to_id(EOT)
            if eos is None:
                raise ValueError(f"BPE vocabulary from {source} has no {EOT} token; GPT-Neo needs it as EOS/separator")
            self.eos_id = eos
            self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        elif kind == "sentencepiece":
            self.eos_id = backend.eos_id()
            if self.eos_id < 0:
                raise ValueError(f"sentencepiece model {source} defines no EOS piece; train it with eos_id >= 0")
            self.vocab_size = backend.get_piece_size()
        else:
            raise ValueError(f"unknown tokenizer kind {kind!r}")

    # --- loading -----------------------------------------------------------------------------
    @classmethod
    def from_path(cls, path: str) -> "Tokenizer":
        """A tokenizer.json, a sentencepiece .model, or a directory holding one of them
        (or GPT-2's vocab.json + merges.txt), local or on object storage."""
        path = os.fspath(path)
        if paths.is_remote(path):
            return cls._from_remote(path)
        if os.path.isdir(path):
            for name in ("tokenizer.model", "spiece.model", "tokenizer.json"):  # .model first: the exact original
                if os.path.exists(os.path.join(path, name)):
                    return cls.from_path(os.path.join(path, name))
            vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
            if os.path.exists(vocab) and os.path.exists(merges):
                return cls._from_vocab_merges(vocab, merges)
            raise FileNotFoundError(
                f"no tokenizer in {path}: expected tokenizer.json, vocab.json + merges.txt, or a sentencepiece "
                "tokenizer.model")
        if not os.path.exists(path):
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        if path.endswith(".json"):
            try:
                return cls(tokenizers.Tokenizer.from_file(path), "bpe", path)
            except Exception as e:
                raise ValueError(f"{path} is not a valid tokenizers JSON file: {e}") from e
        try:
            return cls(spm.SentencePieceProcessor(model_file=path), "sentencepiece", path)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{path} is neither a tokenizer.json nor a valid sentencepiece model: {e}") from e

    @classmethod
    def _from_remote(cls, path: str) -> "Tokenizer":
        """Only the tokenizer's own files are fetched (a model directory also holds its weights)."""
        remote = paths.path(path)
        if remote.is_dir():
            names = [n for n in ("tokenizer.model", "spiece.model", "tokenizer.json") if (remote / n).exists()][:1]
            names = names or [n for n in ("vocab.json", "merges.txt") if (remote / n).exists()]
            if not names or names == ["vocab.json"] or names == ["merges.txt"]:
                raise FileNotFoundError(f"no tokenizer in {path}: expected tokenizer.json, vocab.json + merges.txt, or "
                                        "a sentencepiece tokenizer.model")
        elif remote.exists():
            remote, names = remote.parent, [remote.name]
        else:
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        with tempfile.TemporaryDirectory(prefix="neojax-") as tmp:
            for name in names:
                with open(os.path.join(tmp, name), "wb") as f:
                    f.write((remote / name).read_bytes())
            tok = cls.from_path(tmp if len(names) > 1 else os.path.join(tmp, names[0]))
        tok.source = path
        return tok

    @classmethod
    def find(cls, directory: str) -> "Tokenizer | None":
        """The tokenizer saved in a model directory, or None when it has none."""
        try:
            return cls.from_path(directory)
        except FileNotFoundError:
            return None

    @classmethod
    def _from_vocab_merges(cls, vocab: str, merges: str) -> "Tokenizer":
        tok = tokenizers.Tokenizer(models.BPE.from_file(vocab, merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok.add_special_tokens([EOT])
        return cls(tok, "bpe", os.path.dirname(vocab))

    # --- use ---------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if self.kind == "bpe":
            return self.backend.encode(text, add_special_tokens=False).ids
        return self.backend.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self.kind == "bpe":
            return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]
        return self.backend.encode(list(texts))

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "bpe":
            return self.backend.decode(ids, skip_special_tokens=False)
        return self.backend.decode(ids)

    def save(self, directory: str) -> str:
        """Write into `directory` (tokenizer.json or tokenizer.model); returns the file written."""
        name = "tokenizer.json" if self.kind == "bpe" else "tokenizer.model"
        with paths.staged_dir(directory) as local:
            if self.kind == "bpe":
                self.backend.save(os.path.join(local, name))
            else:
                with open(os.path.join(local, name), "wb") as f:
                    f.write(self.backend.serialized_model_proto())
        return str(paths.path(directory) / name)

    def save_hf(self, directory: str, model_max_length: int) -> None:
        """Write what transformers' AutoTokenizer loads and encodes exactly as this tokenizer does:
        tokenizer.json (a sentencepiece BPE model converted, the .model kept beside it for neojax)
        and tokenizer_config.json naming the fast tokenizer class (else AutoTokenizer would take
        GPT-Neo's default GPT-2 tokenizer). A model that does not convert exactly is refused."""
        self.save(directory)
        eos = EOT if self.kind == "bpe" else self.backend.id_to_piece(self.eos_id)
        if self.kind == "sentencepiece":
            converted = sentencepiece_as_tokenizers(self.backend)
            mismatch = next((t for t in _probe_texts(self) if converted.encode(t, add_special_tokens=False).ids
                             != self.encode(t)), None)
            if mismatch is not None:
                raise ValueError(f"sentencepiece model {self.source} has no exact transformers equivalent (it encodes "
                                 f"{mismatch[:40]!r} differently; only BPE models with byte fallback convert); export "
                                 "a neojax checkpoint instead (--to neojax)")
            converted.save(os.path.join(directory, "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": eos,
                  "unk_token": eos if self.kind == "bpe" else self.backend.id_to_piece(self.backend.unk_id()),
                  "model_max_length": model_max_length, "add_prefix_space": False,
                  "clean_up_tokenization_spaces": False}
        with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)

    def __repr__(self):
        return f"Tokenizer({self.kind}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, source={self.source!r})"


def sentencepiece_as_tokenizers(sp):
    """A `tokenizers.Tokenizer` that encodes as the sentencepiece BPE processor `sp` (identity
    normalisation, no dummy prefix, byte fallback): spaces become U+2581, and every pair of pieces
    whose concatenation is a piece merges in the order of that piece's score, as sentencepiece does."""
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    normal = [i for i in range(sp.get_piece_size())
              if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i))]
    merges = []
    for i in sorted(normal, key=lambda i: (-sp.get_score(i), i)):
        piece = sp.id_to_piece(i)
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((left, right))
    unk = sp.id_to_piece(sp.unk_id())
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token=unk, byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([sp.id_to_piece(i) for i in range(sp.get_piece_size()) if sp.is_control(i)])
    return tok


def _probe_texts(tokenizer) -> list[str]:
    """Strings that exercise a converted tokenizer: every piece, spaces, digits, bytes outside the vocabulary."""
    sp = tokenizer.backend
    pieces = [sp.id_to_piece(i).replace("\u2581", " ") for i in range(sp.get_piece_size())
              if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))]
    return pieces + [" ".join(pieces[k:k + 7]) for k in range(0, len(pieces), 7)] + [
        "Hello, world!  Two  spaces\tand a tab\nnew line", "def f(x):\n    return x ** 2  # 12345",
        "Ünïcödé — “quotes” 漢字 🙂 emoji", "   leading and trailing   ", "a\n\n\nb", "x" * 300]


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_path: str) -> Tokenizer:
    """Train a lossless sentencepiece model (identity normalisation, byte fallback) on `texts`.

    Lossless settings make decode(encode(text)) == text, which GPT-style LMs rely on."""
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    prefix = model_path[:-len(".model")] if model_path.endswith(".model") else model_path
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=vocab_size, model_type="bpe",
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            split_digits=True, byte_fallback=True, allow_whitespace_only_pieces=True,
            max_sentence_length=1 << 16, character_coverage=0.9995,
            unk_id=0, bos_id=-1, eos_id=1, pad_id=-1, user_defined_symbols=[], minloglevel=2)
    except RuntimeError as e:  # sentencepiece's own checks, e.g. a vocabulary larger than the text allows
        raise ValueError(f"cannot train a {vocab_size}-piece sentencepiece model for {model_path}: "
                         f"{message(e)}") from None
    if prefix + ".model" != model_path:
        shutil.move(prefix + ".model", model_path)
    return Tokenizer.from_path(model_path)
