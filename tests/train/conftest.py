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


@pytest.fixture(scope="session")
def first_six_steps(corpus, tiny_tokenizer, tmp_path_factory):
    """A run of 6 steps, trained once per session (each test gets a copy: stopped_at_6)."""
    workdir = str(tmp_path_factory.mktemp("first_six") / "run")
    train(config(corpus, tiny_tokenizer, total=6), workdir)
    return workdir


@pytest.fixture
def stopped_at_6(first_six_steps, tmp_path):
    """A run stopped after its step-6 checkpoint (total_steps may grow on resume), copied to a folder
    of its own: tensorstore caches what this process wrote by path, and damage must reach the disk
    reads."""
    shutil.copytree(first_six_steps, tmp_path / "run")
    return str(tmp_path / "run")
