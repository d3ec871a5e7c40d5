"""`python -m neojax.convert` as a user runs it."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from neojax import checkpoint


def _convert(*args):
    return subprocess.run([sys.executable, "-m", "neojax.convert", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_hf_to_neojax_to_hf(hf_dirs, tmp_path):
    directory, _, _ = hf_dirs["mixed_pattern"]
    native, back = str(tmp_path / "native"), str(tmp_path / "back")
    r = _convert(directory, native, "--to", "neojax")
    assert r.returncode == 0, r.stderr
    assert "wrote neojax checkpoint" in r.stdout and "hf source" in r.stdout
    r = _convert(native, back, "--to", "hf")
    assert r.returncode == 0, r.stderr
    a, b = checkpoint.load(directory), checkpoint.load(back)
    assert a.config == b.config
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    assert os.path.exists(os.path.join(back, "model.safetensors"))


def test_cli_errors_are_short_and_clear(tmp_path):
    r = _convert(str(tmp_path / "nope"), str(tmp_path / "out"), "--to", "hf")
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "plain").mkdir()
    r = _convert(str(tmp_path / "plain"), str(tmp_path / "out"), "--to", "hf")
    assert r.returncode == 2 and "cannot tell the checkpoint format" in r.stderr
