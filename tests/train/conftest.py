
import pytest

from neojax.train.config import base_config

CORPUS = "\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog {i % 7} times. " * (1 + i % 3)
                     for i in range(300))


def small_config(corpus_path: str, tokenizer_dir: str, **train):
    """A seconds-long run on the 8 test devices; the schedule does not depend on total_steps."""
    c = base_config()
    c.model.preset = "tiny"
    c.model.overrides = dict(hidden_size=32, num_layers=2, num_heads=4, window_size=8, max_position_embeddings=64)
    c.data.source = "text_files"
    c.data.source_args = dict(paths=corpus_path, split="blank_line")
    c.data.tokenizer = tokenizer_dir
    c.data.seq_len = 16
    c.data.valid_fraction = 0.1
    c.optimizer.update(lr=1e-2, warmup_steps=2, decay_steps=50)
    c.train.update(total_steps=8, global_batch=8, log_every=1, report_mfu=False)
    c.train.update(**train)
    c.checkpoint.update(every_steps=4, keep=2, async_save=True)
    c.eval.update(every_steps=4, valid_batches=2)
    c.mesh = "data=-1"
    return c


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(CORPUS)
    return str(path)
