"""Tokenizer wrapper: exact round trips and GPT-2's <|endoftext|> = 50256."""
import json

import pytest

from neojax.data.tokenizer import EOT, Tokenizer, train_sentencepiece

TEXTS = ["Hello world, this is GPT-Neo.\n\nA second   paragraph with  spaces\tand tabs.",
         "naïve café — ünïcödé, 日本語のテキスト, emoji 🤖🚀 and digits 1234567890.",
         "def f(x):\n    return x ** 2  # code\n"] * 20
HARD = ["  leading and trailing spaces  ", "line\r\nbreaks\n\n\nmany", "🤖 unseen ∮ glyphs ℵ", "", " "]


@pytest.fixture(scope="module")
def gpt2_like_dir(tmp_path_factory):
    """vocab.json + merges.txt shaped like GPT-2's: 50257 entries with <|endoftext|> last."""
    from tokenizers import ByteLevelBPETokenizer
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(TEXTS, vocab_size=400, min_frequency=1, special_tokens=[])
    directory = tmp_path_factory.mktemp("gpt2_like")
    trainer.save_model(str(directory))
    vocab = json.loads((directory / "vocab.json").read_text())
    n = len(vocab)
    vocab.update({f"<|unused{i}|>": i for i in range(n, 50256)})  # pad to GPT-2's size
    vocab[EOT] = 50256
    (directory / "vocab.json").write_text(json.dumps(vocab))
    return directory


def test_gpt2_bpe_round_trip_and_endoftext(gpt2_like_dir, tmp_path):
    tok = Tokenizer.from_path(str(gpt2_like_dir))
    assert tok.kind == "bpe" and tok.eos_id == 50256 and tok.vocab_size == 50257
    for text in TEXTS[:3] + HARD:
        assert tok.decode(tok.encode(text)) == text
    ids = tok.encode("first doc" + EOT + "second doc")
    assert ids.count(50256) == 1 and tok.decode(ids) == "first doc" + EOT + "second doc"
    assert tok.encode_batch(TEXTS[:3]) == [tok.encode(t) for t in TEXTS[:3]]
    # Saved as tokenizer.json, reloaded the same.
    tok.save(str(tmp_path))
    again = Tokenizer.from_path(str(tmp_path / "tokenizer.json"))
    assert all(again.encode(t) == tok.encode(t) for t in TEXTS[:3] + HARD)
    assert again.eos_id == 50256


def test_sentencepiece_round_trip(tmp_path):
    tok = train_sentencepiece(TEXTS, vocab_size=400, model_path=str(tmp_path / "sp.model"))
    assert tok.kind == "sentencepiece" and tok.vocab_size == 400 and tok.eos_id == 1
    for text in TEXTS[:3] + HARD:
        assert tok.decode(tok.encode(text)) == text
    assert max(max(ids, default=0) for ids in tok.encode_batch(TEXTS[:3])) < 400
    tok.save(str(tmp_path / "saved"))
    assert Tokenizer.from_path(str(tmp_path / "saved")).encode(TEXTS[1]) == tok.encode(TEXTS[1])


def test_missing_or_corrupt_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json, vocab.json"):
        Tokenizer.from_path(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizers JSON"):
        Tokenizer.from_path(str(tmp_path))
    (tmp_path / "bad.model").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="sentencepiece"):
        Tokenizer.from_path(str(tmp_path / "bad.model"))
