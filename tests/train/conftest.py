import shutil

import pytest
from resume_case import TOTAL, config
from support import CORPUS

from neojax.train.loop import train


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(CORPUS)
    return str(path)


@pytest.fixture(scope="session")
def uninterrupted(corpus, tiny_tokenizer, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    assert train(config(corpus, tiny_tokenizer), workdir)["step"] == TOTAL
    return workdir


@pytest.fixture
def stopped_at_6(corpus, tiny_tokenizer, tmp_path):
    """A run stopped after its step-6 checkpoint (total_steps may grow on resume), moved to another
    folder: tensorstore caches what this process wrote by path, and damage must reach the disk reads."""
    train(config(corpus, tiny_tokenizer, total=6), str(tmp_path / "first"))
    shutil.copytree(tmp_path / "first", tmp_path / "run")
    return str(tmp_path / "run")
