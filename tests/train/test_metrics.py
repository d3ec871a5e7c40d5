"""The metrics writer starts without importing what tensorboardX would import for features it does
not use (torch, boto3, google.cloud.storage), and leaves them importable afterwards."""
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_train_command_imports_neither_torch_nor_the_cloud_clients():
    code = ("import sys; import neojax.train.__main__; "
            "print(sorted(m for m in ('torch', 'boto3', 'google.cloud.storage') if m in sys.modules)); "
            "import torch, boto3; from google.cloud import storage; print('importable')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["[]", "importable"]
