"""Shared fixtures: tiny random transformers GPT-Neo models saved to temporary folders.

XLA_FLAGS must be set before jax is imported so that mesh tests see 8 CPU devices."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# float32 references mean float32 products: on GPUs JAX would otherwise use TF32 matmuls (~1e-3).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# One compilation cache for the session and the command lines it starts: restarted runs
# (resume, SIGKILL, CLI tests) reuse compiled programs instead of recompiling them.
import tempfile  # noqa: E402

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="neojax-test-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import numpy as np
import pytest

# Shapes the parity tests cover: (name, transformers GPTNeoConfig kwargs, sequence length).
SHAPES = {
    # seq 300 > window 256: local layers really cut the context.
    "default_window": (dict(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4,
                            attention_types=[[["global", "local"], 1]], window_size=256,
                            max_position_embeddings=320), 300),
    # non-default window and intermediate_size, odd head count.
    "window7_inner40": (dict(vocab_size=64, hidden_size=24, num_layers=4, num_heads=3,
                             attention_types=[[["global", "local"], 2]], window_size=7, intermediate_size=40,
                             max_position_embeddings=64), 50),
    # mixed pattern starting with a local layer, blocks that do not divide the sequence.
    "mixed_pattern": (dict(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2,
                           attention_types=[[["local"], 1], [["global", "local"], 1]], window_size=5,
                           max_position_embeddings=40), 33),
}


def random_hf_model(seed=0, weight_std=0.2, **config_kwargs):
    """A transformers GPTNeoForCausalLM with random weights large enough to make parity meaningful."""
    import torch
    import transformers
    config = transformers.GPTNeoConfig(bos_token_id=0, eos_token_id=0, **config_kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.GPTNeoForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(weight_std * torch.randn(p.shape, generator=gen))
    return model


def hf_logits(model, tokens, attention_mask=None, position_ids=None):
    import torch
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(np.asarray(tokens), dtype=torch.long),
                    attention_mask=None if attention_mask is None else torch.as_tensor(np.asarray(attention_mask)),
                    position_ids=None if position_ids is None else torch.as_tensor(np.asarray(position_ids)))
    return out.logits.float().numpy()


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """{shape name: (directory, torch model, seq_len)} saved once per test session."""
    out = {}
    for name, (kwargs, seq_len) in SHAPES.items():
        model = random_hf_model(**kwargs)
        directory = str(tmp_path_factory.mktemp(f"hf_{name}"))
        model.save_pretrained(directory)
        out[name] = (directory, model, seq_len)
    return out


def left_padded_batch(rng, vocab_size, seq_len, pads=(0, 3, 11)):
    """Tokens [len(pads), seq_len] and a mask with the given number of left pads per row."""
    tokens = rng.integers(0, vocab_size, size=(len(pads), seq_len))
    mask = np.ones_like(tokens)
    for row, n in enumerate(pads):
        mask[row, :n] = 0
        tokens[row, :n] = 0
    return tokens, mask


TOKENIZER_TEXTS = ["The quick brown fox jumps over the lazy dog. " * 3, "Once upon a time, there was a model.\n",
                   "def hello():\n    print('hi')\n", "GPT-Neo generates text, one token at a time."] * 10


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A small GPT-2-style byte-level BPE tokenizer (with <|endoftext|>) trained here."""
    from tokenizers import ByteLevelBPETokenizer

    from neojax.data.tokenizer import Tokenizer
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(TOKENIZER_TEXTS, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    directory = tmp_path_factory.mktemp("tiny_tokenizer")
    trainer.save_model(str(directory))
    return Tokenizer.from_path(str(directory))


@pytest.fixture(scope="session")
def tiny_hf_with_tokenizer(tiny_tokenizer, tmp_path_factory):
    """A random GPT-Neo whose vocabulary is the tiny tokenizer's, saved with it as a HF directory."""
    model = random_hf_model(vocab_size=tiny_tokenizer.vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                            attention_types=[[["global", "local"], 1]], window_size=16, max_position_embeddings=128)
    directory = str(tmp_path_factory.mktemp("tiny_hf_tok"))
    model.save_pretrained(directory)
    tiny_tokenizer.save(directory)
    return directory
