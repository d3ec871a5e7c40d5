"""What every benchmark section uses: timing, rows, the torch reference, synthetic text."""
from __future__ import annotations

import dataclasses
import socket
import time
from typing import Callable, Optional

import jax
import numpy as np
from tokenizers import ByteLevelBPETokenizer

from neojax.checkpoint.hf import state_dict_from_params
from neojax.data.tokenizer import Tokenizer
from neojax.model.config import GPTNeoConfig


def best(fn, repeats=2):
    """Fastest of `repeats` timed calls after one warm-up (which compiles)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def on_accelerator():
    return jax.default_backend() != "cpu"


def row(name, unit, ours, theirs=None):
    return {"name": name, "unit": unit, "neojax": ours, "transformers": theirs,
            "ratio": None if theirs in (None, 0) else ours / theirs}


def torch_model(config, params):
    import torch  # deferred: the reference is optional (requirements-test.txt)
    import transformers  # deferred: the reference is optional (requirements-test.txt)

    hf = {k: v for k, v in config.to_hf_dict().items() if k not in ("model_type", "architectures")}
    model = transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(**hf)).eval()
    model.load_state_dict({k: torch.tensor(v) for k, v in state_dict_from_params(params, config).items()},
                          strict=False)
    model.generation_config.eos_token_id = None
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def synthetic_text():
    """text(n): n random words of English-like letters and a period (a fixed seed)."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("etaoinshrdlucmfwyp"), rng.integers(2, 9))) for _ in range(3000)]
    return lambda n: " ".join(rng.choice(words, n)) + "."


def synthetic_tokenizer(texts, config, directory) -> Tokenizer:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=min(8192, config.vocab_size), special_tokens=["<|endoftext|>"])
    bpe.save_model(directory)
    return Tokenizer.from_path(directory)


@dataclasses.dataclass(frozen=True)
class Workload:
    """How much each section measures: new tokens of the decode rows and their rounds, the
    evaluation rows' documents, the serving rows' concurrent streams and their new tokens."""
    new_tokens: int = 128
    rounds: int = 3
    lambada_docs: int = 64
    wiki_pages: int = 2
    wmt_docs: int = 16
    clients: int = 16
    serve_tokens: int = 64


QUICK = Workload(new_tokens=32, rounds=1, lambada_docs=16, wiki_pages=1, wmt_docs=4, clients=4, serve_tokens=32)


@dataclasses.dataclass
class Run:
    """One benchmark run, as every section sees it: the command's arguments, the model shapes
    (`config`: the first preset's in --dtype), random params (`placed` on --mesh, `on` its label),
    whether transformers measures too, the measured matmul peak, `add(row)` and the workload
    (--quick: QUICK)."""
    args: object
    presets: list
    shapes: dict
    config: GPTNeoConfig
    params: dict
    placed: dict
    on: str
    torch_too: bool
    peak: float
    datasheet: Optional[float]
    add: Callable[[dict], None]
    work: Workload = Workload()

    @property
    def name(self) -> str:
        return self.presets[0]
