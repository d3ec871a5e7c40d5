"""The loop never waits for the devices between log steps: no array is read back to the host
except at log, evaluation and checkpoint steps (JAX's transfer guard does not fire on CPUs, so
reads are counted at ArrayImpl._value, through which every conversion to a host value goes)."""
import glob
import os

import jax._src.array as jax_array
import pytest
from support import small_config

import neojax.train.loop as loop


def _run_counting_reads(monkeypatch, config, workdir):
    calls, reads = [0], []
    value = jax_array.ArrayImpl._value

    def counted(self):
        reads.append(calls[0])
        return value.fget(self)

    make = loop.make_train_step

    def make_counted(*args, **kwargs):
        step = make(*args, **kwargs)

        def run(*a):
            calls[0] += 1
            return step(*a)
        return run

    monkeypatch.setattr(loop, "make_train_step", make_counted)
    monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(counted))
    result = loop.train(config, workdir)
    return result, calls[0], reads


@pytest.mark.slow
def test_no_device_reads_between_log_steps(monkeypatch, corpus, tiny_tokenizer, tmp_path):
    c = small_config(corpus, tiny_tokenizer.source, total_steps=12, log_every=4)
    c.checkpoint.every_steps, c.eval.every_steps = 12, 0
    result, steps, reads = _run_counting_reads(monkeypatch, c, str(tmp_path))
    assert result["step"] == 12 and steps == 12
    after = sorted(set(reads))  # reads after step k's dispatch (0: before the first step)
    assert set(after) - {0} <= {4, 8, 12}, f"host reads after steps {after}: only log steps (4, 8, 12) may read"
    assert {4, 8} <= set(after)  # the log steps do read (the test can see reads)
    # no host callback in the step: jax's persistent compilation cache (conftest's folder) keeps it,
    # so a restarted run loads it instead of compiling it again
    assert glob.glob(os.path.join(os.environ["JAX_COMPILATION_CACHE_DIR"], "jit_step-*"))


@pytest.mark.slow
def test_nonfinite_guard_still_stops_without_per_step_reads(monkeypatch, corpus, tiny_tokenizer, tmp_path):
    c = small_config(corpus, tiny_tokenizer.source, total_steps=40, log_every=20, max_nonfinite_streak=3)
    c.optimizer.lr = 1e30  # params explode, gradients are non-finite from then on
    c.checkpoint.every_steps, c.eval.every_steps = 100, 0
    with pytest.raises(loop.NonFiniteError, match="consecutive steps had NaN/Inf gradients"):
        _run_counting_reads(monkeypatch, c, str(tmp_path))
