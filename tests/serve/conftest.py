"""A real server in a subprocess on 127.0.0.1 (a free port) with the tiny checkpoint."""
import pytest
from support import Server


@pytest.fixture(scope="package")
def server(tiny_hf_with_tokenizer):
    s = Server(tiny_hf_with_tokenizer, "--max_batch", "4", "--chunk", "16", "--max_queue", "48",
               "--model_name", "tiny")
    yield s
    assert s.stop() == 0, "".join(s.lines)


@pytest.fixture(scope="package")
def tiny(tiny_hf_with_tokenizer):
    from neojax import checkpoint
    return checkpoint.load(tiny_hf_with_tokenizer)
