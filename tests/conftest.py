"""Shared fixtures: tiny random transformers GPT-Neo models saved to temporary folders.

XLA_FLAGS must be set before jax is imported so that mesh tests see 8 CPU devices."""
import os

# The suite compiles hundreds of tiny programs and runs each a few times, so compiling is most of its
# time: no LLVM optimisations, the CPU backend's older elemental emitters (the fusion emitters take twice
# as long to compile a decode loop) and one codegen thread (the workers already fill the cores). The
# programs compute the same results; benchmarks do not use these flags.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                                   "--xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false "
                                   "--xla_cpu_parallel_codegen_split_count=1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# float32 references mean float32 products: on GPUs JAX would otherwise use TF32 matmuls (~1e-3).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# One compilation cache for the session and the command lines it starts: restarted runs
# (resume, SIGKILL, CLI tests) reuse compiled programs instead of recompiling them.
import tempfile  # noqa: E402

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="neojax-test-xla-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # unoptimised compiles are quick

import pytest
from support import SHAPES, TOKENIZER_TEXTS, random_hf_model, saved_hf_model


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
    return saved_hf_model(tmp_path_factory.mktemp("tiny_hf_tok"), tiny_tokenizer, hidden_size=32, num_layers=2,
                          num_heads=4, attention_types=[[["global", "local"], 1]], window_size=16,
                          max_position_embeddings=128)


# --- where the suite's time goes: seconds by file, printed at the end of every run -----------------
_SECONDS_BY_FILE: dict = {}
SLOWEST_FILES = 12


def pytest_runtest_logreport(report):
    """Each test's setup, call and teardown time, added to its file's (workers report to the controller)."""
    path = report.nodeid.split("::", 1)[0]
    _SECONDS_BY_FILE[path] = _SECONDS_BY_FILE.get(path, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _SECONDS_BY_FILE:
        return
    total = sum(_SECONDS_BY_FILE.values())
    terminalreporter.write_sep("-", f"slowest files (of {total / 60:.1f} test-minutes; the wall time is less with -n)")
    for path, seconds in sorted(_SECONDS_BY_FILE.items(), key=lambda kv: -kv[1])[:SLOWEST_FILES]:
        terminalreporter.write_line(f"{seconds:8.1f}s {100 * seconds / total:5.1f}%  {path}")


def pytest_sessionfinish(session):
    """Under `coverage run`, each xdist worker saves what it measured here: a worker that takes more
    than 10 s to exit is killed by its controller, and its at-exit save would be lost with it."""
    import sys
    if "coverage" in sys.modules:
        current = sys.modules["coverage"].Coverage.current()
        if current is not None:
            current.save()
